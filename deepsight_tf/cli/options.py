"""Command-line options made from the settings dataclasses, so each default is written once.

`settings_options(TrainSettings)` gives a Typer command one option per field: the flag from
the field's name, its default, its help, its help panel and, for a field with choices, a
Literal type, so that `--help` lists the values, shell completion offers them and a typo fails
while parsing with the list (exit 2). The command receives the constructed (and so validated)
settings.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from typer.core import TyperCommand

from deepsight_tf.cli.console import OneLineUsageErrors
from deepsight_tf.core.settings import PANELS, flag_name
from deepsight_tf.core.settings_file import CONFIG_FLAG, read_settings_file


def _option_type(annotation: Any, choices: tuple[str, ...] | None, default: Any) -> Any:
    if choices is None:
        return annotation
    literal = Literal[choices]  # type: ignore[valid-type]
    return literal | None if default is None else literal


class _FlagsTakeNoValue:
    """--help shows no value after a flag (an option that takes none: --resume, --help):
    Typer 0.29 prints `<bool>` there, as if it took one."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class Command(_FlagsTakeNoValue, TyperCommand):
    """A deepsight command: `@app.command(cls=Command)`."""


class Group(_FlagsTakeNoValue, OneLineUsageErrors):
    """The deepsight app: `typer.Typer(cls=Group)`; usage errors in one line."""


def _panel_order(f: Field[Any]) -> int:
    panel = f.metadata.get("panel")
    return PANELS.index(panel) if panel in PANELS else len(PANELS)


def settings_parameters(
    cls: type, exclude: frozenset[str] = frozenset()
) -> list[inspect.Parameter]:
    """One keyword-only Typer option per command-line field of the settings class `cls`, in the
    order of their help panels (a field's own order within its panel)."""
    hints = typing.get_type_hints(cls)
    parameters = []
    for f in sorted(fields(cls), key=_panel_order):
        if f.name in exclude or not f.metadata.get("cli", True):
            continue
        if f.default is MISSING:
            raise TypeError(f"{cls.__name__}.{f.name} needs a default to become an option")
        choices = f.metadata.get("choices")
        annotation = _option_type(hints[f.name], choices, f.default)
        flag = flag_name(f.name)
        if hints[f.name] is bool:  # both spellings, so a default of True can be turned off
            flag = f"{flag}/--no-{flag.removeprefix('--')}"
        option = typer.Option(
            flag,
            help=f.metadata["help"],
            show_default=True,
            rich_help_panel=f.metadata.get("panel"),
        )
        parameters.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=f.default,
                annotation=Annotated[annotation, option],
            )
        )
    return parameters


CONFIG_PARAM = "config"
CONTEXT_PARAM = "settings_context"  # not `ctx`: a command may take its own


def _config_parameter() -> inspect.Parameter:
    option = typer.Option(
        CONFIG_FLAG,
        help="A TOML file of settings: its tables named after this command (experiment reads "
        "train's too; keys spelled as the flags are); flags typed here override it. A run's "
        "own stored settings file repeats the run.",
        show_default=False,
    )
    return inspect.Parameter(
        CONFIG_PARAM,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[Path | None, option],
    )


def _context_parameter() -> inspect.Parameter:
    """Typer hands the click context to a parameter of this type, whatever its name."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    return inspect.Parameter(CONTEXT_PARAM, keyword, annotation=typer.Context)


def _from_config(
    ctx: typer.Context, path: Path, cls: type, names: frozenset[str]
) -> dict[str, Any]:
    """The file's values for the options of `cls` not typed on the command line; each is
    recorded in the context's meta["config_fields"] (a resume compares them as typed ones)."""
    typed = {
        name
        for name in names
        if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"
    }
    values = {k: v for k, v in read_settings_file(path, cls, names).items() if k not in typed}
    ctx.meta.setdefault("config_fields", set()).update(values)
    return values


def settings_options(
    cls: type, exclude: frozenset[str] = frozenset(), param: str = "settings"
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command `def cmd(own params..., settings)`: Typer sees the own parameters and
    one option per settings field; the command is called with `settings=cls(**those values)`.
    `param` names the command's parameter, so that two settings classes can be stacked.
    The command's `settings_fields` maps each option made so to its field (help, rule, panel),
    which the command reference in docs/ reads."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        own_hints = typing.get_type_hints(func, include_extras=True)
        own = [
            p.replace(annotation=own_hints.get(p.name, p.annotation))
            for p in inspect.signature(func).parameters.values()
            if p.name != param
        ]
        generated = settings_parameters(cls, exclude)
        names = frozenset(p.name for p in generated)
        owns_config = all(p.name != CONFIG_PARAM for p in own)  # stacked: the inner one reads it
        # Typer hands the context to one parameter only: the command's own, where it has one.
        ctx_name = next((p.name for p in own if p.annotation is typer.Context), CONTEXT_PARAM)
        adds_context = owns_config and ctx_name == CONTEXT_PARAM
        if owns_config:
            own += [_config_parameter(), *([_context_parameter()] if adds_context else [])]

        @functools.wraps(func)
        def command(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in list(kwargs) if name in names}
            config = kwargs.pop(CONFIG_PARAM) if owns_config else kwargs.get(CONFIG_PARAM)
            ctx = kwargs.pop(ctx_name) if adds_context else kwargs.get(ctx_name)
            if config is not None:
                values.update(_from_config(ctx, config, cls, names))
            return func(*args, **{param: cls(**values)}, **kwargs)

        del command.__wrapped__  # Typer must read the signature below, not func's
        made = {f.name: f for f in fields(cls) if f.name in names}
        command.settings_fields = {**getattr(func, "settings_fields", {}), **made}  # type: ignore[attr-defined]
        command.__signature__ = inspect.Signature([*own, *generated])  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in [*own, *generated]}
        return command

    return decorate
