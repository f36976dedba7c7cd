"""Doctor checks on the model defenses: output policies, the profile, the feature view.

From the settings alone: a ``full`` output policy for every caller, or for a role other
than ``admin``, is reported (detailed scores are what inversion and extraction feed
on), and so is a model without a reference profile (no input guard, no drift). With
``--handler`` the doctor also imports the handler, as ``secureserve run`` would (so only
for projects whose code you trust), and reports a policy the server would refuse and
an input with no feature view (the defenses that need one are then off).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from secureserve.doctor.findings import FIX_SEE_MESSAGE, Finding, error, info, warning
from secureserve.errors import ConfigError, SecureServeError
from secureserve.lockfile import LOCK_FILENAME, read_lock
from secureserve.profile import DEFAULT_PROFILE
from secureserve.settings import Settings

__all__ = ["check"]

_FIX_POLICY: Final = (
    'set [model.output] policy = "top_k" (or "label_only") and give full scores only to '
    'a custom role held by trusted callers, e.g. [model.output.roles] analyst = "full".'
)


def check(settings: Settings, *, handler: bool) -> Iterator[Finding]:
    """The defense findings for ``settings``; ``handler``: import the handler to check more."""
    output = settings.model.output
    if output.policy == "full":
        yield warning(
            "output-full-scores",
            "[model.output] policy",
            "every caller with role predict receives full scores, which make model "
            "inversion and extraction cheaper.",
            _FIX_POLICY,
        )
    full = sorted(role for role, name in output.roles.items() if name == "full" and role != "admin")
    if full:
        yield warning(
            "output-full-scores-role",
            "[model.output.roles]",
            f"callers holding {', '.join(full)} receive full scores; make sure only trusted "
            "callers hold that role.",
            "keep such roles for few, named keys (secureserve keys create --role predict "
            f"--role {full[0]} --name WHO), or lower their policy to top_k.",
        )
    has_profile = settings.model.profile is not None or _locked_profile(settings)
    if not has_profile:
        yield info(
            "profile-missing",
            "[model] profile",
            "the model has no reference profile, so the input guard and drift monitoring are off.",
            "write one from the training data: `secureserve profile DATA --out "
            f"{settings.model.dir.name}/{DEFAULT_PROFILE}`, then `secureserve lock`.",
        )
    if handler:
        yield from _check_handler(settings, has_profile=has_profile)


def _locked_profile(settings: Settings) -> bool:
    try:
        lock, _ = read_lock(settings.project_dir / LOCK_FILENAME)
    except (OSError, SecureServeError):
        return False
    return DEFAULT_PROFILE in lock.files


def _check_handler(settings: Settings, *, has_profile: bool) -> Iterator[Finding]:
    from secureserve.cli._common import import_handler  # noqa: PLC0415 - runs project code
    from secureserve.defenses import check_feature_view  # noqa: PLC0415
    from secureserve.outputs import OutputPolicies  # noqa: PLC0415

    try:
        cls = import_handler(settings.model.handler, settings.project_dir)
        cls.check_definition()
    except ConfigError as exc:
        yield error("handler-invalid", "[model] handler", str(exc), FIX_SEE_MESSAGE)
        return
    where = f"{cls.__module__}.{cls.__qualname__}"
    try:
        policies = OutputPolicies(cls.output_type, settings.model.output, where=where)
    except ConfigError as exc:
        yield error("output-policy-invalid", "[model.output]", str(exc), FIX_SEE_MESSAGE)
    else:
        if not policies.has_scores:
            yield info(
                "output-unmarked",
                where,
                "no output field is marked ss.Score or ss.Scores, so no output policy "
                "applies: whatever predict returns is sent as it is.",
                "annotate probability and confidence fields with ss.Score / ss.Scores "
                "(and labels with ss.Label) so that the policy can round or hide them.",
            )
    try:
        reason = check_feature_view(cls, settings.model, has_profile=has_profile)
    except ConfigError as exc:
        yield error("feature-view-missing", where, str(exc), FIX_SEE_MESSAGE)
        return
    if reason is not None:
        yield warning(
            "defenses-off",
            where,
            f"the input has no feature view ({reason}), so the input guard, drift "
            "monitoring and extraction detection cannot run.",
            "define features(self, batch) and feature_names on the handler.",
        )
