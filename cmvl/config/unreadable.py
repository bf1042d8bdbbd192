"""What to say when Hydra's override grammar cannot read a command-line value.

Hydra's parser answers with ANTLR's words (`LexerNoViableAltException`, `mismatched input '<EOF>'`), which say
neither which argument is wrong nor what to do. The usual cause is a value with a character the grammar gives a
meaning to (a quote, bracket, brace, parenthesis, comma, `$`, `=`): quoting the value makes it a plain string.
"""

from __future__ import annotations

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


def _unreadable(line: str) -> bool:
    """Hydra's grammar cannot read `line`, or its value is an interpolation OmegaConf cannot parse."""
    try:
        override = OverridesParser.create().parse_overrides([line])[0]
    except HydraException:
        return True
    value = override.value()
    if isinstance(value, str) and "${" in value:
        try:
            OmegaConf.create({"probe": value})._get_node("probe")._dereference_node()
        except OmegaConfBaseException as err:
            return type(err).__name__ == "GrammarParseError"
    return False


def _quoted(value: str) -> str:
    if '"' not in value:
        return f'"{value}"'
    if "'" not in value:
        return f"'{value}'"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unreadable_override(overrides: list[str]) -> str:
    """The one-line message for the first override Hydra cannot read (or a general one if each reads alone)."""
    line = next((o for o in overrides if _unreadable(o)), None)
    if line is None:
        return "an override could not be read; quote values that have spaces or any of ' \" , [ ] { } ( ) $ ="
    key, sep, value = line.partition("=")
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]  # already quoted: the example shows the value with the right quoting
    if not sep or not key:
        return f"'{line}': an override is key=value (e.g. trainer.max_epochs=3)"
    if "${" in value:
        escaped = _quoted(value.replace("${", "\\${"))
        return (
            f"{line}: '${{' starts an interpolation (${{other.key}}) that is not complete; finish it, or write \\${{ "
            f"for a literal '$' followed by '{{', e.g. {key}={escaped}"
        )
    example = f"{key}={_quoted(value)}"
    return (
        f"{line}: cannot be read as a value (a quote, bracket, brace, parenthesis, comma or '$' in it has a meaning "
        f"in Hydra's override syntax, or one is unbalanced); quote the value, e.g. {example}"
    )
