"""One stage's assets and checks, written once and built for each lineage.

A stage module declares its assets with `stage.asset(...)` and its checks with
`stage.asset_check(...)` / `stage.multi_asset_check(...)`, taking the same arguments as
Dagster's decorators with the stage's own keys (`data/qa_pairs`). `stage.build(lineage)`
makes the Dagster definitions of one lineage: every key, dependency and check moved under
the lineage's prefix, every group named for it, and every resource the function asks for
bound under the lineage's resource key (`runbooks_dvc`), so two lineages in one code
location never share a resource. A parameter annotated `Lineage` is not a resource: it
receives the lineage the definition was built for (its keys, home and source).
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg
import pydantic
from pydantic.fields import FieldInfo

from resources.lineage import Lineage

DEFAULT = Lineage()


def _rekey(lineage: Lineage, value):
    if isinstance(value, dg.AssetKey):
        return lineage.key(value)
    if isinstance(value, dg.AssetCheckSpec):
        return dg.AssetCheckSpec(value.name, asset=lineage.key(value.asset_key), blocking=value.blocking, description=value.description,
                                 additional_deps=[lineage.key(d.asset_key) for d in value.additional_deps], metadata=value.metadata)
    if type(value) is list:
        return [_rekey(lineage, v) for v in value]
    return value


def _is_resource(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, dg.ConfigurableResource) and not issubclass(annotation, Lineage)


class ConfigError(ValueError):
    pass


def with_defaults(config: type[dg.Config], values: dict, where: str) -> type[dg.Config]:
    """`config` with other defaults, checked by its own validation: the launchpad, the jobs,
    schedules and sensors of a lineage all start from its settings."""
    unknown = sorted(set(values) - set(config.model_fields))
    if unknown:
        raise ConfigError(f"{where}: unknown settings {unknown}; {config.__name__} has {sorted(config.model_fields)}")
    try:
        config(**values)
    except pydantic.ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(settings)'}={e.get('input')!r}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{where}: {problems}") from None
    fields = {name: (config.model_fields[name].annotation, FieldInfo.merge_field_infos(config.model_fields[name], default=value))
              for name, value in values.items()}
    return pydantic.create_model(config.__name__, __base__=config, __module__=config.__module__, **fields)


def bind(fn: Callable, lineage: Lineage, config: dict | None = None, where: str = "") -> Callable:
    """`fn` as Dagster should call it for `lineage`: resource parameters renamed to the
    lineage's resource keys, a `Lineage` parameter filled in and hidden, and its config
    class given the lineage's defaults."""
    hints = typing.get_type_hints(fn)
    params = list(inspect.signature(fn).parameters.values())
    hidden = [p.name for p in params if hints.get(p.name) is Lineage]
    renamed = {p.name: lineage.resource_key(p.name) for p in params if _is_resource(hints.get(p.name))}
    if config:
        if "config" not in hints:
            raise ConfigError(f"{where} takes no settings; got {sorted(config)}")
        hints = {**hints, "config": with_defaults(hints["config"], config, where)}
    elif not hidden and all(old == new for old, new in renamed.items()):
        return fn
    back = {new: old for old, new in renamed.items()}

    @functools.wraps(fn)
    def bound(*args, **kwargs):
        return fn(*args, **{back.get(k, k): v for k, v in kwargs.items()}, **{name: lineage for name in hidden})

    bound.__signature__ = inspect.Signature(
        [p.replace(name=renamed.get(p.name, p.name), annotation=hints.get(p.name, p.annotation)) for p in params if p.name not in hidden],
        return_annotation=hints.get("return", inspect.Signature.empty))
    del bound.__wrapped__  # Dagster must read the signature above, not the function's own.
    return bound


@dataclass
class Stage:
    _declared: list[tuple[Callable, dict, Callable]] = field(default_factory=list)

    def _declare(self, decorator: Callable, **kwargs) -> Callable:
        def declare(fn: Callable) -> Callable:
            self._declared.append((decorator, kwargs, fn))
            return fn
        return declare

    def asset(self, **kwargs) -> Callable:
        return self._declare(dg.asset, **kwargs)

    def asset_check(self, **kwargs) -> Callable:
        return self._declare(dg.asset_check, **kwargs)

    def multi_asset_check(self, **kwargs) -> Callable:
        return self._declare(dg.multi_asset_check, **kwargs)

    def asset_names(self) -> list[str]:
        return [kwargs["key"].to_user_string() for decorator, kwargs, _ in self._declared if decorator is dg.asset]

    def build(self, lineage: Lineage = DEFAULT, config: dict[str, dict] | None = None) -> dict[str, dg.AssetsDefinition | dg.AssetChecksDefinition]:
        """Each declared function's definition for `lineage`, by function name; `config`
        holds the lineage's own defaults for an asset's settings, by its key (`retrieval/chunks`)."""
        built, config = {}, config or {}
        for decorator, kwargs, fn in self._declared:
            name = kwargs["key"].to_user_string() if decorator is dg.asset else ""
            bound = bind(fn, lineage, config.get(name), f"{lineage.label()} lineage, {name}")
            kwargs = {k: _rekey(lineage, v) for k, v in kwargs.items()}
            if "group_name" in kwargs:
                kwargs["group_name"] = lineage.group(kwargs["group_name"])
            if lineage.name and decorator is dg.multi_asset_check:  # its name is its op's, unique in the code location
                kwargs["name"] = f"{lineage.name}__{kwargs.get('name') or fn.__name__}"
            built[fn.__name__] = decorator(**kwargs)(bound)
        return built
