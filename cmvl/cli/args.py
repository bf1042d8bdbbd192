"""The one argument style of cmvl's own (non-Hydra) commands: `key=value` pairs, like Hydra's overrides.

A command declares its keys (`Option`: type, default, one-line help) in a `Spec`; `parse` turns the command line
into their values and, for commands that read a config (`eval`, `data info`, `data prepare`), the remaining
config overrides. Unknown keys, flags (`--out DIR`, the style of cmvl before) and bare words are one line each
that shows the spelling to use. A value with spaces must be quoted for the shell: `question="What's left?"`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmvl.errors import UserError
from cmvl.log import DEFAULT_VERBOSITY, VERBOSITY_LEVELS, check_verbosity, configure

REQUIRED = object()
QUOTING_RULE = """Every argument is key=value. Quote a value with spaces or shell characters, e.g.
  out="/data/my shapes"   question="What's left of the circle?"
(the shell removes the quotes; one pair of quotes written inside the value, 'key="a b"', is removed too)."""
# `cmvl train` hands its arguments to Hydra, whose override grammar reads , [ ] { } ' " and = in a value as syntax
HYDRA_QUOTING_RULE = """Every argument is a Hydra override key=value. Quote a value with spaces for the shell:
  dataset.root="/data/my vqa"
A value with characters Hydra reads as syntax (, [ ] { } ' " = and the like) is quoted again inside, e.g.
  'hydra.run.dir="runs/a,b"'   (a bare comma sweeps over values under -m)."""
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OVERRIDE_KEY = re.compile(r"(\+\+|\+|~)?[A-Za-z_][A-Za-z0-9_.@/-]*")  # Hydra's: dotted keys, groups, +/++/~


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An option type: an integer >= minimum (and <= maximum)."""
    expected = f"an integer in [{minimum}, {maximum}]" if maximum is not None else f"an integer >= {minimum}"

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"must be {expected}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise ValueError(f"must be {expected}")
        return value

    return convert


def choice(options: tuple[str, ...]) -> Callable[[str], str]:
    """An option type: one of `options`."""

    def convert(text: str) -> str:
        if text not in options:
            raise ValueError(f"choose one of {', '.join(options)}")
        return text

    return convert


def positive_float(text: str) -> float:
    """An option type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a number > 0") from None
    if not value > 0:
        raise ValueError("must be a number > 0")
    return value


def probability(text: str) -> float:
    """An option type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a number in [0, 1]") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be a number in [0, 1]")
    return value


def text_list(text: str) -> tuple[str, ...]:
    """An option type: comma-separated texts (`a,b` or `[a, b]`), each stripped and unquoted; none of them empty."""
    inner = text.strip()
    if inner.startswith("[") and inner.endswith("]"):
        inner = inner[1:-1]
    texts = tuple(unquote(q.strip()) for q in inner.split(","))
    if not all(texts):
        raise ValueError("an empty text (give texts separated by commas: red circle,blue square)")
    return texts


def path(text: str) -> Path:
    """An option type: a file or folder path (~ expanded)."""
    if not text:
        raise ValueError("must be a path")
    return Path(text).expanduser()


@dataclass(frozen=True)
class Option:
    """One `key=value` of a command; `default` REQUIRED: the command needs it."""

    key: str
    help: str
    type: Callable[[str], Any] = str
    default: Any = REQUIRED
    metavar: str = "VALUE"

    def synopsis(self) -> str:
        text = f"{self.key}={self.metavar}"
        return text if self.default is REQUIRED else f"[{text}]"


VERBOSITY = Option(
    "verbosity",
    "how much cmvl says on stderr (quiet: warnings and errors only)",
    check_verbosity,
    DEFAULT_VERBOSITY,
    "|".join(VERBOSITY_LEVELS),
)


@dataclass(frozen=True)
class Spec:
    """A command's keys. `overrides`: the command also takes config overrides (what they do, for --help);
    `positional`: the key a bare word was before (`cmvl plot RUN_DIR` is now `cmvl plot run=RUN_DIR`)."""

    command: str
    description: str
    options: tuple[Option, ...]
    overrides: str = ""
    positional: str = ""
    epilog: str = ""
    all_options: tuple[Option, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "all_options", (*self.options, VERBOSITY))
        keys = [o.key for o in self.all_options]
        assert len(keys) == len(set(keys)), f"{self.command}: a key declared twice"
        assert not self.positional or self.positional in keys, self.positional

    def option(self, key: str) -> Option | None:
        return next((o for o in self.all_options if o.key == key), None)

    def synopsis(self) -> str:
        parts = [o.synopsis() for o in self.options]
        return " ".join([*parts, "[key=value ...]"] if self.overrides else parts)

    def help(self) -> str:
        rows = [(o.synopsis().strip("[]"), o.help + _default(o)) for o in self.all_options]
        if self.overrides:
            rows.append(("key=value ...", self.overrides))
        width = max(len(r[0]) for r in rows) + 2
        table = "\n".join(f"  {name:<{width}}{text}" for name, text in rows)
        sections = [f"usage: cmvl {self.command} {self.synopsis()}", self.description, f"keys:\n{table}"]
        return "\n\n".join([*sections, *([self.epilog] if self.epilog else []), QUOTING_RULE])


def _default(option: Option) -> str:
    if option.default is REQUIRED:
        return " (required)"
    return "" if option.default is None else f" (default {option.default})"


def wants_help(args: list[str]) -> bool:
    return any(a in ("-h", "--help") for a in args)


def unquote(text: str) -> str:
    """`"a b"` / `'a b'` → `a b` (Hydra's quoting inside a value); anything else as it is."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


@dataclass
class Parsed:
    values: dict[str, Any]
    overrides: list[str]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]


def parse(spec: Spec, args: list[str]) -> Parsed:
    """The values of `spec`'s keys in `args` (defaults filled in) and the config overrides; sets the verbosity.
    Raises `UserError` with one line for anything else."""
    name = spec.command
    _refuse_old_style(spec, args)
    values: dict[str, Any] = {}
    overrides: list[str] = []
    for arg in args:
        key, sep, text = arg.partition("=")
        option = spec.option(key) if sep else None
        if option is not None:
            if key in values:
                raise UserError(f"{name}: {key}= given twice")
            try:
                values[key] = option.type(unquote(text))
            except (ValueError, UserError) as err:
                reason = str(err).split(": ", 1)[-1] if isinstance(err, UserError) else str(err)
                raise UserError(f"{name}: {key}={text}: {reason}") from None
        elif spec.overrides and (sep and _OVERRIDE_KEY.fullmatch(key) or arg.startswith("~")):
            overrides.append(arg)
        elif not sep:
            also = "; and config overrides" if spec.overrides else ""
            raise UserError(f"{name}: expected key=value, got '{arg}' (keys: {_keys(spec)}{also})")
        else:
            close = difflib.get_close_matches(key, [o.key for o in spec.all_options], n=1)
            hint = f"; did you mean {close[0]}=?" if close else ""
            raise UserError(f"{name}: unknown key '{key}' (keys: {_keys(spec)}){hint}")
    missing = [o for o in spec.options if o.default is REQUIRED and o.key not in values]
    if missing:
        needed = " ".join(f"{o.key}={o.metavar}" for o in missing)
        raise UserError(f"{name}: missing {needed} ({missing[0].help}; see cmvl {name} --help)")
    for option in spec.all_options:
        values.setdefault(option.key, option.default)
    configure(values["verbosity"])
    return Parsed(values, overrides)


def _refuse_old_style(spec: Spec, args: list[str]) -> None:
    """`--key VALUE` / `--key=VALUE` flags and the bare word of `spec.positional` (cmvl's style before key=value):
    one line with the whole command in the new spelling. Not accepted alongside: one style for every command."""
    new: list[str] = []
    old: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        key, sep, text = arg.partition("=")
        if arg.startswith("-"):
            flag, has_value, value = arg.lstrip("-").partition("=")
            option = spec.option(flag.replace("-", "_"))
            if option is None:
                raise UserError(f"{spec.command} takes key=value arguments, not {arg} (keys: {_keys(spec)})")
            if not has_value and i + 1 < len(args) and not args[i + 1].startswith("-") and "=" not in args[i + 1]:
                i, value, has_value = i + 1, args[i + 1], True
            old.append(f"{arg} {value}" if has_value and "=" not in arg else arg)
            new.append(f"{option.key}={_shell(value) if has_value else option.metavar}")
        elif spec.positional and (not sep or not (_KEY.fullmatch(key) or spec.overrides)):
            old.append(arg)  # a bare path, also one with a '=' in it (a sweep job's folder)
            new.append(f"{spec.positional}={_shell(arg)}")
        else:
            new.append(_shell(arg))
        i += 1
    if old:
        raise UserError(
            f"{spec.command}: '{' '.join(old)}' is the old spelling; write: cmvl {spec.command} {' '.join(new)}"
        )


def _keys(spec: Spec) -> str:
    return ", ".join(o.key for o in spec.all_options)


def _shell(value: str) -> str:
    import shlex

    return shlex.quote(value)
