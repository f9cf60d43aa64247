"""The daemon's YAML configuration, in the original harpd's format.

::

    network:
      address: 127.0.0.1        # default; "0.0.0.0" or "::" to listen everywhere
      port: 4306                # default
      certfile: /etc/harpd/harpd.cert.pem   # leaf first, then its CA chain
      keyfile: /etc/harpd/harpd.key.pem     # default: certfile
    python:
      path: [/opt/lib]          # put first on the module search path, or:
      # path: {prepend: [...], append: [...]}
    authentication:
      module: harpd.auth.passfile   # or "passfile"
      file: /etc/harpd/users.txt
      # module: harpd.auth.inconfig # or "inconfig"
      # users: {alice: "plain:s3cret", bob: "crypt:$6$..."}

Relative paths are taken relative to the configuration file's directory.
Unknown keys are errors, so that a typo cannot silently change behaviour;
every error names the key at fault.  Nothing here imports Twisted.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import yaml

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_PORT",
    "AUTH_MODULES",
    "ConfigError",
    "NetworkConfig",
    "PythonPathConfig",
    "AuthenticationConfig",
    "DaemonConfig",
    "load_config",
    "parse_config",
    "load_logging_config",
]

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 4306

#: Accepted ``authentication.module`` values and the module each one means.
AUTH_MODULES = {
    "harpd.auth.passfile": "passfile",
    "passfile": "passfile",
    "harpd.auth.inconfig": "inconfig",
    "inconfig": "inconfig",
}
# The options each module takes, beyond "module".
_AUTH_OPTIONS = {"passfile": ("file",), "inconfig": ("users",)}


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class NetworkConfig:
    """Where and how to listen."""

    certfile: str
    keyfile: str
    address: str = DEFAULT_ADDRESS
    port: int = DEFAULT_PORT


@dataclass(frozen=True)
class PythonPathConfig:
    """Directories added before and after the module search path."""

    prepend: Tuple[str, ...] = ()
    append: Tuple[str, ...] = ()


@dataclass(frozen=True)
class AuthenticationConfig:
    """Which password database to use: ``module`` is ``"passfile"`` or
    ``"inconfig"``; ``options`` holds its ``file`` or ``users``."""

    module: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DaemonConfig:
    """The whole configuration file."""

    network: NetworkConfig
    authentication: AuthenticationConfig
    python: PythonPathConfig = PythonPathConfig()


def _section(data: Mapping[str, Any], key: str, allowed: Tuple[str, ...], required: bool) -> Dict[str, Any]:
    value = data.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{key}: section missing")
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, not {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key (expected one of: {', '.join(allowed)})")
    return value


def _string(section: Mapping[str, Any], name: str, key: str, default: Optional[str] = None) -> str:
    value = section.get(key, default)
    if not isinstance(value, str) or not value:
        if key not in section and default is None:
            raise ConfigError(f"{name}.{key}: required")
        raise ConfigError(f"{name}.{key}: expected a non-empty string, not {value!r}")
    return value


def _path_list(value: Any, key: str, base: str) -> Tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise ConfigError(f"{key}: expected a list of directories")
    return tuple(os.path.join(base, p) for p in value)


def _network(data: Mapping[str, Any], base: str) -> NetworkConfig:
    section = _section(data, "network", ("address", "port", "certfile", "keyfile"), True)
    port = section.get("port", DEFAULT_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"network.port: expected a port number 0-65535, not {port!r}")
    certfile = os.path.join(base, _string(section, "network", "certfile"))
    keyfile = os.path.join(base, _string(section, "network", "keyfile", certfile))
    address = _string(section, "network", "address", DEFAULT_ADDRESS)
    return NetworkConfig(certfile, keyfile, address, port)


def _python(data: Mapping[str, Any], base: str) -> PythonPathConfig:
    path = _section(data, "python", ("path",), False).get("path")
    if isinstance(path, dict):
        unknown = sorted(str(k) for k in path if k not in ("prepend", "append"))
        if unknown:
            raise ConfigError(f"python.path.{unknown[0]}: unknown key (expected prepend, append)")
        return PythonPathConfig(
            _path_list(path.get("prepend"), "python.path.prepend", base),
            _path_list(path.get("append"), "python.path.append", base),
        )
    return PythonPathConfig(prepend=_path_list(path, "python.path", base))


def _authentication(data: Mapping[str, Any], base: str) -> AuthenticationConfig:
    raw = data.get("authentication")
    if not isinstance(raw, dict):
        _section(data, "authentication", (), True)  # raises: missing or not a mapping
    module_name = raw.get("module")
    if not isinstance(module_name, str) or module_name not in AUTH_MODULES:
        raise ConfigError(
            f"authentication.module: expected one of {', '.join(AUTH_MODULES)}, "
            f"not {module_name!r}"
        )
    module = AUTH_MODULES[module_name]
    section = _section(data, "authentication", ("module",) + _AUTH_OPTIONS[module], True)
    if module == "passfile":
        return AuthenticationConfig(
            module, {"file": os.path.join(base, _string(section, "authentication", "file"))}
        )
    users = section.get("users")
    if not isinstance(users, dict):
        raise ConfigError("authentication.users: expected a mapping of user names to passwords")
    return AuthenticationConfig(module, {"users": dict(users)})


def parse_config(data: Any, base: str = ".") -> DaemonConfig:
    """Validate decoded YAML; relative paths are joined to ``base``."""
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping with network and authentication sections")
    unknown = sorted(str(k) for k in data if k not in ("network", "python", "authentication"))
    if unknown:
        raise ConfigError(
            f"{unknown[0]}: unknown section (expected network, python, authentication)"
        )
    return DaemonConfig(_network(data, base), _authentication(data, base), _python(data, base))


def _read_yaml(path: str, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"{what} {path}: {e.strerror or e}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {path}: not valid YAML: {e}") from None


def load_config(path: str) -> DaemonConfig:
    """Read and validate the configuration file ``path``."""
    data = _read_yaml(path, "configuration file")
    try:
        return parse_config(data, os.path.dirname(os.path.abspath(path)))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def load_logging_config(path: str) -> Dict[str, Any]:
    """Read a :func:`logging.config.dictConfig` dictionary from a YAML file."""
    data = _read_yaml(path, "logging configuration")
    if not isinstance(data, dict) or "version" not in data:
        raise ConfigError(f"logging configuration {path}: expected a dictConfig mapping with 'version'")
    return data
