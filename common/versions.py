"""The software a party runs: fedlego's version and each installed plugin distribution's (the
packages that register encoders or modality kinds), so that parties of different versions are
detected before a run instead of failing in the middle of it."""

from __future__ import annotations

from importlib.metadata import entry_points

from fedlego import __version__

PLUGIN_GROUPS = ("fedlego.encoders", "fedlego.kinds")


def software_versions() -> dict[str, str]:
    """``{"fedlego": version, <plugin distribution>: version, ...}`` of this environment."""
    versions = {"fedlego": __version__}
    for group in PLUGIN_GROUPS:
        for entry in entry_points(group=group):
            if entry.dist is not None:
                versions[entry.dist.name] = entry.dist.version
    return versions


def version_mismatch(site: str, theirs: dict[str, str] | None, ours: dict[str, str]) -> str | None:
    """Why a site's software cannot join this coordinator's run (None when it can): another
    fedlego version (or none said), or another version of a plugin both have installed; a field
    that is not a mapping of names to versions is refused as malformed (it comes from another site)."""
    if theirs is not None and (
        not isinstance(theirs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in theirs.items())
    ):
        return f"{site} sent a malformed software field (names to versions expected): {str(theirs)[:80]!r}"
    if not theirs or "fedlego" not in theirs:
        return f"{site} did not say its fedlego version (an older fedlego); the coordinator runs {ours['fedlego']}"
    differing = [
        f"{name} {theirs[name]} at {site}, {ours[name]} at the coordinator"
        for name in sorted(set(theirs) & set(ours))
        if theirs[name] != ours[name]
    ]
    if differing:
        return "versions differ: " + "; ".join(differing) + " (every party must run the same release)"
    return None
