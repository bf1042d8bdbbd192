"""`cmvl generate ckpt=PATH prompt=TEXT | prompts=FILE [n=16] [seed=0] [out=PNG]`: images from a text-to-image run."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from cmvl.cli.args import Option, Spec, integer, parse, path, wants_help
from cmvl.errors import UserError

GENERATE = Spec(
    "generate",
    """Draws n images for each prompt with a task=generation checkpoint (restored by cmvl.load_run, no dataset read)
and writes them as one PNG grid: one prompt's images in a square, several prompts one row each. The same seed
gives the same images; every prompt starts from the same noise.""",
    (
        Option("ckpt", "a task=generation checkpoint", path, metavar="PATH"),
        Option("prompt", 'the text to draw (quoted: prompt="a red circle left of a blue square")', str, None, "TEXT"),
        Option("prompts", "a text file of prompts, one per line (blank lines skipped)", path, None, "FILE"),
        Option("n", "images per prompt", integer(1, 1024), 16, "N"),
        Option("seed", "seed of the noise the images start from", integer(0, 2**63 - 1), 0, "S"),
        Option("out", "the PNG grid to write", path, Path("generated.png"), "PNG"),
        Option("steps", "sampling steps (diffusion; default: the run's generator.sample_steps)", integer(1), None, "N"),
        Option("guidance_scale", "classifier-free guidance (default: the run's; 1 = none)", float, None, "S"),
        Option("device", "where the model runs: cpu, cuda, cuda:1, mps", str, "cpu", "DEVICE"),
    ),
)
CELL = 96  # pixels per image side in the grid (images are scaled up with nearest-neighbour)
LABEL_HEIGHT = 14


def generate_command(args: list[str]) -> None:
    if wants_help(args):
        print(GENERATE.help())
        return
    parsed = parse(GENERATE, args)
    prompts = _prompts(parsed["prompt"], parsed["prompts"])
    out = _checked_out(parsed["out"])
    import cmvl
    from cmvl.progress import track
    from cmvl.tasks.generation import GenerationTask, generate_images, prompt_problem

    run = cmvl.load_run(parsed["ckpt"], device=parsed["device"])
    if not isinstance(run.task, GenerationTask):
        raise UserError(
            f"generate: ckpt={parsed['ckpt']} is a checkpoint of task={run.task.name}; cmvl generate needs a "
            "task=generation checkpoint"
        )
    for prompt in prompts:
        problem = prompt_problem(run.tokenizer, prompt)
        if problem:
            raise UserError(f"generate: {problem}")
    n = parsed["n"]
    done = iter(range(1, len(prompts) + 1))

    def progress(steps, total):
        return track(steps, total=total, description=f"sampling prompt {next(done)}/{len(prompts)}")

    images = generate_images(
        run.model,
        run.tokenizer,
        prompts,
        n=n,
        seed=parsed["seed"],
        max_length=int(run.config.text.max_length),
        steps=parsed["steps"],
        guidance_scale=parsed["guidance_scale"],
        progress=progress,
    )
    _write_grid(out, prompts, images)
    print(f"{n * len(prompts)} images ({len(prompts)} prompt{'s' if len(prompts) > 1 else ''} × {n}): {out}")


def _prompts(prompt: str | None, prompts_file: Path | None) -> list[str]:
    """The prompts of `prompt=` or `prompts=FILE` (exactly one of them), each non-empty."""
    if (prompt is None) == (prompts_file is None):
        raise UserError("generate: give prompt=TEXT or prompts=FILE (one of the two)")
    if prompt is not None:
        if not prompt.strip():
            raise UserError('generate: prompt= is empty; write the text to draw, e.g. prompt="a red circle"')
        return [prompt.strip()]
    try:
        lines = prompts_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise UserError(f"generate: prompts={prompts_file}: cannot read it as UTF-8 text: {reason}") from None
    found = [line.strip() for line in lines if line.strip()]
    if not found:
        raise UserError(f"generate: prompts={prompts_file} holds no prompt (one per line)")
    return found


def _checked_out(out: Path) -> Path:
    """`out=` as a .png path in a folder cmvl can write to (checked before the model is loaded)."""
    from cmvl.config.writable import check_writable_dir

    if out.suffix.lower() != ".png":
        raise UserError(f"generate: out={out}: must be a .png file")
    if out.is_dir():
        raise UserError(f"generate: out={out}: is a folder; name the .png file to write")
    check_writable_dir(out.parent, "generate: out= folder ")
    return out


def _write_grid(out: Path, prompts: list[str], images: list) -> None:
    """One PNG, written atomically (a failed write leaves no half file): a square of one prompt's images, or one
    labelled row per prompt."""
    from PIL import Image, ImageDraw, ImageFont

    from cmvl.atomic_file import atomic_write

    n = len(images[0])
    columns = math.ceil(math.sqrt(n)) if len(prompts) == 1 else n
    rows_per_prompt = math.ceil(n / columns)
    band = CELL * rows_per_prompt + LABEL_HEIGHT
    canvas = Image.new("RGB", (columns * CELL, band * len(prompts)), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default(size=11)
    for p, (prompt, batch) in enumerate(zip(prompts, images, strict=True)):
        top = p * band
        label = textwrap.shorten(prompt, width=max(20, columns * CELL // 6), placeholder="…")
        draw.text((2, top + 1), label, fill="black", font=font)
        for i, image in enumerate(batch):
            picture = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((CELL, CELL), Image.Resampling.NEAREST)
            canvas.paste(picture, ((i % columns) * CELL, top + LABEL_HEIGHT + (i // columns) * CELL))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, "wb") as f:
        canvas.save(f, format="PNG")
