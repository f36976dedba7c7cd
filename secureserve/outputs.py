"""Output policies: what each caller sees of a model's scores.

Detailed scores are what model inversion and extraction feed on, so output fields say
what they mean in their type: :data:`Label` (a class label), :data:`Score` (one
probability or confidence in [0, 1]) and :data:`Scores` (label -> probability). As
metadata the same names mark a type of your own: ``Annotated[int, ss.Label]``, or
``Annotated[list[float], ss.Scores]`` for a list of probabilities.

A policy acts on those fields only, on the typed objects a handler returned (after the
output was validated against its type, never on JSON text):

- ``full``: every score, rounded to ``decimals``;
- ``top_k``: the ``top_k`` best entries of each mapping, rounded (a single score is
  rounded; a list of scores cannot be cut, since positions are its labels, so a
  ``top_k`` policy over one is refused at start-up);
- ``label_only``: score fields are left out of the response, so they must be optional
  in the type (``score: ss.Score | None = None``).

A score outside [0, 1] or not finite is a :class:`~secureserve.errors.ModelError`
(a 500), never rounded into a valid-looking value. :class:`OutputPolicies` picks a
caller's policy from its roles and builds, for each policy in use, the response type
that OpenAPI shows to the callers who get it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, Final, Union, get_args, get_origin

import msgspec

from secureserve.errors import ConfigError, ModelError
from secureserve.settings import OutputSettings, PolicyName

__all__ = [
    "Label",
    "OutputPolicies",
    "OutputView",
    "Score",
    "Scores",
    "label_field",
    "score_fields",
]


class _Marker:
    """What an output field means; found in ``Annotated`` metadata."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __repr__(self) -> str:
        return f"secureserve.{self.kind}"


_LABEL: Final = _Marker("Label")
_SCORE: Final = _Marker("Score")
_SCORES: Final = _Marker("Scores")

Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
#: A class label: never changed by a policy.
Label = Annotated[str, _LABEL]
#: One probability or confidence in [0, 1]: rounded, or left out by ``label_only``.
Score = Annotated[float, msgspec.Meta(ge=0.0, le=1.0), _SCORE]
#: Label -> probability: cut to the best ``top_k``, rounded, or left out by ``label_only``.
Scores = Annotated[dict[str, Probability], _SCORES]

_ALIASES: Final = ((Label, _LABEL), (Score, _SCORE), (Scores, _SCORES))
#: Policies from least to most revealing: a caller gets the last one its roles allow.
ORDER: Final[tuple[PolicyName, ...]] = ("label_only", "top_k", "full")
_OMIT: Final = object()


@dataclass(frozen=True)
class _Policy:
    name: PolicyName
    top_k: int
    decimals: int


_LABEL_ONLY: Final = _Policy("label_only", 1, 0)


# --------------------------------------------------------------------------- plans
# A plan knows where the marked fields are in one type and how to apply a policy to a
# value of that type; ``None`` stands for "nothing marked here, keep the value as is".


class _Plan:
    def apply(self, value: Any, policy: _Policy) -> Any:
        raise NotImplementedError

    def view(self, policy: _Policy) -> Any:
        """The type of what :meth:`apply` returns under ``policy``."""
        raise NotImplementedError

    def omitted(self, policy: _Policy) -> bool:  # noqa: ARG002 - overridden where it matters
        """Whether ``policy`` leaves a field of this type out entirely."""
        return False


class _Leaf(_Plan):
    def __init__(self, marker: _Marker, hint: Any, where: str) -> None:
        self.marker = marker
        self.hint = hint
        self.where = where
        base = get_origin(_strip(hint)) or _strip(hint)
        self.mapping = marker is _SCORES and base in (dict, Mapping)
        if marker is _SCORES and not self.mapping and base not in (list, tuple):
            raise ConfigError(
                f"output field `{where}` is marked ss.Scores but is neither a mapping "
                "label -> probability nor a list of probabilities."
            )

    def apply(self, value: Any, policy: _Policy) -> Any:
        if self.marker is _LABEL:
            return value
        if policy.name == "label_only":
            return _OMIT
        digits = policy.decimals
        if self.marker is _SCORE:
            _check_unit((value,), self.where)
            return round(value, digits)
        if not self.mapping:
            _check_unit(value, self.where)
            return type(value)(round(v, digits) for v in value)
        _check_unit(value.values(), self.where)
        items: Iterable[tuple[Any, float]] = value.items()
        if policy.name == "top_k" and len(value) > policy.top_k:
            # a stable sort, best first: ties keep their order
            items = sorted(items, key=_score_of, reverse=True)[: policy.top_k]
        return {k: round(v, digits) for k, v in items}

    def view(self, policy: _Policy) -> Any:  # noqa: ARG002 - a leaf keeps its type
        return self.hint

    def omitted(self, policy: _Policy) -> bool:
        return self.marker is not _LABEL and policy.name == "label_only"


class _Optional(_Plan):
    def __init__(self, inner: _Plan) -> None:
        self.inner = inner

    def apply(self, value: Any, policy: _Policy) -> Any:
        return None if value is None else self.inner.apply(value, policy)

    def view(self, policy: _Policy) -> Any:
        return self.inner.view(policy) | None

    def omitted(self, policy: _Policy) -> bool:
        return self.inner.omitted(policy)


class _List(_Plan):
    def __init__(self, inner: _Plan) -> None:
        self.inner = inner

    def apply(self, value: Any, policy: _Policy) -> Any:
        return [self.inner.apply(item, policy) for item in value]

    def view(self, policy: _Policy) -> Any:
        item = self.inner.view(policy)
        return list[item]  # type: ignore[valid-type]


class _Struct(_Plan):
    def __init__(
        self, cls: type[msgspec.Struct], fields: dict[str, _Plan], required: list[str]
    ) -> None:
        self.cls = cls
        self.fields = fields  # the fields that hold marked values, by Python name
        self.required = required
        self.names = tuple(f.name for f in msgspec.structs.fields(cls))
        self._views: dict[PolicyName, type[msgspec.Struct]] = {}

    def apply(self, value: Any, policy: _Policy) -> Any:
        out = {}
        for name in self.names:
            item = getattr(value, name)
            plan = self.fields.get(name)
            if plan is not None:
                item = plan.apply(item, policy)
                if item is _OMIT:
                    continue
            out[name] = item
        return self.view(policy)(**out)

    def view(self, policy: _Policy) -> type[msgspec.Struct]:
        view = self._views.get(policy.name)
        if view is None:
            view = self._views[policy.name] = self._build_view(policy)
        return view

    def _build_view(self, policy: _Policy) -> type[msgspec.Struct]:
        """A Struct of our own with the fields this policy sends, named and encoded alike.

        Always our own: building the handler's class would run its ``__post_init__``
        (user code, which may reject a cut mapping) while the response is encoded.
        """
        config = self.cls.__struct_config__
        fields: list[Any] = []
        rename = {}
        for info in msgspec.structs.fields(self.cls):
            plan = self.fields.get(info.name)
            if plan is not None and plan.omitted(policy):
                continue
            kind = plan.view(policy) if plan is not None else info.type
            if info.default is not msgspec.NODEFAULT:
                fields.append((info.name, kind, msgspec.field(default=info.default)))
            elif info.default_factory is not msgspec.NODEFAULT:
                fields.append(
                    (info.name, kind, msgspec.field(default_factory=info.default_factory))
                )
            else:
                fields.append((info.name, kind))
            rename[info.name] = info.encode_name
        return msgspec.defstruct(
            self.cls.__name__,
            fields,
            kw_only=True,
            rename=rename,
            omit_defaults=config.omit_defaults,
            array_like=config.array_like,
            tag=config.tag,
            tag_field=config.tag_field,
            module=self.cls.__module__,
        )


#: Struct plans by class while one output type is compiled: one view per class.
_Memo = dict[type, object]
_IN_PROGRESS: Final = object()


def _plan(hint: Any, where: str, memo: _Memo) -> _Plan | None:
    """The plan for values of type ``hint``, or None when nothing in it is marked.

    A marked field the plan could not reach (inside a union, a dict or tuple of
    Structs, a Struct that contains itself) is a :class:`ConfigError`: a policy that
    silently skipped it would send the scores it is meant to hide.
    """
    bare, optional = _without_none(hint)
    if optional:
        inner = _plan(bare, where, memo)
        return None if inner is None else _Optional(inner)
    marker = _marker(bare)
    if marker is not None:
        return _Leaf(marker, bare, where)
    base = _strip(bare)
    if isinstance(base, type) and issubclass(base, msgspec.Struct):
        if memo.get(base) is _IN_PROGRESS:
            if _contains_marker(base, set()):
                raise _unreachable(where, f"{base.__name__}, which contains itself")
            return None
        if base not in memo:
            memo[base] = _IN_PROGRESS
            memo[base] = _struct_plan(base, where, memo)
        found = memo[base]
        return found if isinstance(found, _Struct) else None
    if get_origin(base) is list and len(get_args(base)) == 1:
        inner = _plan(get_args(base)[0], f"{where}[]", memo)
        return None if inner is None else _List(inner)
    if _contains_marker(base, set()):
        raise _unreachable(where, "a union, mapping or tuple")
    return None


def _contains_marker(hint: Any, seen: set[type]) -> bool:
    """Whether a Label, Score or Scores marker appears anywhere in ``hint``."""
    if _marker(hint) is not None:
        return True
    base = _strip(hint)
    if isinstance(base, type) and issubclass(base, msgspec.Struct):
        if base in seen:
            return False
        seen.add(base)
        return any(_contains_marker(f.type, seen) for f in msgspec.structs.fields(base))
    return any(_contains_marker(arg, seen) for arg in get_args(base))


def _unreachable(where: str, what: str) -> ConfigError:
    return ConfigError(
        f"output field `{where or 'the output'}` holds ss.Label, ss.Score or ss.Scores inside "
        f"{what}, where output policies cannot reach them; use a Struct, a list of Structs "
        "or an optional field for them."
    )


def _struct_plan(cls: type[msgspec.Struct], where: str, memo: _Memo) -> _Struct | None:
    fields = {}
    required = []  # score fields without a default: label_only cannot leave them out
    for info in msgspec.structs.fields(cls):
        path = f"{where}.{info.encode_name}" if where else info.encode_name
        plan = _plan(info.type, path, memo)
        if plan is not None:
            fields[info.name] = plan
            if info.required and plan.omitted(_LABEL_ONLY):
                required.append(path)
    return _Struct(cls, fields, required) if fields else None


def label_field(output_type: Any) -> str | None:
    """The Python name of the output Struct's first top-level ``ss.Label`` field, if any."""
    base = _strip(output_type)
    if not (isinstance(base, type) and issubclass(base, msgspec.Struct)):
        return None
    for info in msgspec.structs.fields(base):
        if _marker(_without_none(info.type)[0]) is _LABEL:
            return info.name
    return None


def score_fields(output_type: Any) -> tuple[str | None, str | None]:
    """The first top-level ``ss.Score`` field and ``ss.Scores`` mapping field, by Python name."""
    base = _strip(output_type)
    score = scores = None
    if isinstance(base, type) and issubclass(base, msgspec.Struct):
        for info in msgspec.structs.fields(base):
            hint = _without_none(info.type)[0]
            marker = _marker(hint)
            if marker is _SCORE and score is None:
                score = info.name
            elif marker is _SCORES and scores is None and get_origin(_strip(hint)) is dict:
                scores = info.name
    return score, scores


def _without_none(hint: Any) -> tuple[Any, bool]:
    if get_origin(hint) in (Union, UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(get_args(hint)) == len(args) + 1:
            return args[0], True
    return hint, False


def _strip(hint: Any) -> Any:
    while get_origin(hint) is Annotated:
        hint = get_args(hint)[0]
    return hint


def _marker(hint: Any) -> _Marker | None:
    if get_origin(hint) is not Annotated:
        return None
    for item in hint.__metadata__:
        if isinstance(item, _Marker):
            return item
        for alias, marker in _ALIASES:
            if item is alias:
                return marker
    return _marker(get_args(hint)[0])


def _check_unit(values: Iterable[float], where: str) -> None:
    """Every value in [0, 1] (NaN and Infinity fail the comparison too)."""
    if not all(0.0 <= v <= 1.0 for v in values):
        raise ModelError(f"output field `{where}` holds a score outside [0, 1]")


def _score_of(item: tuple[Any, float]) -> float:
    return item[1]


def _leaves(plan: _Plan | None) -> list[_Leaf]:
    if plan is None:
        return []
    if isinstance(plan, _Leaf):
        return [plan]
    if isinstance(plan, _Optional | _List):
        return _leaves(plan.inner)
    if isinstance(plan, _Struct):
        return [leaf for inner in plan.fields.values() for leaf in _leaves(inner)]
    return []  # pragma: no cover - every plan kind is listed above


def _required(plan: _Plan | None) -> list[str]:
    """Score fields ``label_only`` would leave out though the type requires them."""
    if isinstance(plan, _Optional | _List):
        return _required(plan.inner)
    if isinstance(plan, _Struct):
        return plan.required + [w for inner in plan.fields.values() for w in _required(inner)]
    return []


# --------------------------------------------------------------------------- policies


@dataclass(frozen=True)
class OutputView:
    """One policy compiled for one output type: what a caller under it receives."""

    policy: PolicyName
    top_k: int
    decimals: int
    #: ``list[view of the output type]``: what :meth:`apply` returns, for encoding and OpenAPI
    response_item: Any
    _apply: Callable[[Any], Any]

    def apply(self, outputs: list[Any]) -> list[Any]:
        """The outputs as this policy shows them (new objects; ``outputs`` is not changed)."""
        apply = self._apply
        return [apply(output) for output in outputs]


class OutputPolicies:
    """The output policy of every caller of one model, compiled once at start-up.

    ``for_roles(roles)`` is the view of a caller holding ``roles``: the most permissive
    (``full`` > ``top_k`` > ``label_only``) among the ``[model.output.roles]`` entries of
    those roles, and the model's policy when it holds none of them. ``None`` when the
    output type has no score field (nothing for a policy to do).
    """

    def __init__(self, output_type: Any, settings: OutputSettings, *, where: str) -> None:
        plan = _plan(output_type, "", {})
        leaves = _leaves(plan)
        self.has_scores = any(leaf.marker is not _LABEL for leaf in leaves)
        lists = [leaf.where for leaf in leaves if leaf.marker is _SCORES and not leaf.mapping]
        default: PolicyName = settings.policy or "top_k"
        if settings.policy is None and lists:
            raise ConfigError(
                f"{where}: the output has a list of scores (`{lists[0]}`), which the default "
                "policy top_k cannot cut (positions are the labels): set [model.output] policy "
                '= "full" (rounded to decimals) or "label_only".'
            )
        in_use = {default, *settings.roles.values()}
        if lists and "top_k" in in_use:
            raise ConfigError(
                f'{where}: [model.output] uses policy "top_k", but `{lists[0]}` is a list of '
                "scores, which top_k cannot cut (positions are the labels); use a mapping "
                'label -> probability (ss.Scores), or "full" / "label_only".'
            )
        required = _required(plan)
        if required and "label_only" in in_use and self.has_scores:
            raise ConfigError(
                f'{where}: policy "label_only" leaves out `{required[0]}`, so that field must '
                "be optional in the output type, e.g. `score: ss.Score | None = None`."
            )
        self._roles = dict(settings.roles)
        self._views: dict[PolicyName, OutputView] = {}
        if plan is not None and self.has_scores:
            for name in sorted(in_use, key=ORDER.index):
                policy = _Policy(name, settings.top_k, settings.decimals)
                self._views[name] = OutputView(
                    policy=name,
                    top_k=settings.top_k,
                    decimals=settings.decimals,
                    response_item=plan.view(policy),
                    _apply=_bind(plan, policy),
                )
        self.default = self._views.get(default)

    @property
    def views(self) -> Mapping[PolicyName, OutputView]:
        """The compiled views, one per policy in use (empty without score fields)."""
        return self._views

    def for_roles(self, roles: frozenset[str]) -> OutputView | None:
        """The view of a caller holding ``roles`` (see the class docstring)."""
        if not self._roles or not self._views:
            return self.default
        best = -1
        for role in roles:
            name = self._roles.get(role)
            if name is not None:
                best = max(best, ORDER.index(name))
        return self.default if best < 0 else self._views[ORDER[best]]


def _bind(plan: _Plan, policy: _Policy) -> Callable[[Any], Any]:
    def apply(value: Any) -> Any:
        return plan.apply(value, policy)

    return apply
