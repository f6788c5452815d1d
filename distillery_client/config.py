"""Where the CLI finds its server and token: flags, then DISTILLERY_URL / DISTILLERY_TOKEN, then
the config file (``$DISTILLERY_CONFIG`` or ``~/.config/distillery/config.json``, written by
``distillery login`` readable by its owner only)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


class ConfigError(Exception):
    pass


def config_path() -> Path:
    explicit = os.environ.get("DISTILLERY_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "distillery" / "config.json"


@dataclass(frozen=True)
class Settings:
    url: str
    token: str


def load(url: str | None = None, token: str | None = None) -> Settings:
    stored: dict[str, str] = {}
    path = config_path()
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except ValueError as exc:
            raise ConfigError(
                f"{path}: not valid JSON ({exc}); run `distillery login` again"
            ) from exc
    url = url or os.environ.get("DISTILLERY_URL") or stored.get("url")
    token = token or os.environ.get("DISTILLERY_TOKEN") or stored.get("token")
    if not url or not token:
        missing = " and ".join(n for n, v in (("a URL", url), ("a token", token)) if not v)
        raise ConfigError(
            f"no {missing}: set DISTILLERY_URL and DISTILLERY_TOKEN, pass --url/--token, or run "
            "`distillery login --url URL --token TOKEN` (tokens are made on the team's API "
            "tokens page)"
        )
    return Settings(url=url, token=token)


def save(settings: Settings) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created readable by its owner only, before the token is written into it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": settings.url, "token": settings.token}, fh)
    os.chmod(path, 0o600)
    return path
