"""Settings from the environment: every `VCM_*` variable (listed in docs/settings.md), read in one
place. Each has a laptop-friendly default.

`Settings.from_env()` reads them (pydantic-settings, prefix `VCM_`, names in any case) and
checks them all: a bad value stops start-up with one message naming the variable, e.g.
`invalid setting VCM_LEASE_TTL: 'soon' is not seconds or a duration like '24h'` (SystemExit).
Durations take seconds or Go-style durations ("24h", "90m"), parsed by
`core.parsing.parse_duration`. The HTTP shim's own variables (`VCM_API_*`) are read by
`api_shim.settings` with the same mechanism.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import BeforeValidator, Field, ValidationError, ValidationInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .core.errors import InvalidRequest
from .core.parsing import parse_duration
from .core.placement import STRATEGIES
from .core.text import text_problem
from .redis_url import check as check_redis_url

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POOLS = ROOT / "examples" / "pools.yaml"
PREFIX = "VCM_"
YEAR = 365 * 86400.0
DEFAULT_MAX_SHARDS = 16  # VCM_MIRROR_MAX_SHARDS: slot ConfigMaps name-0 .. name-15
# The ConfigMap mirror's chunk size (VCM_MIRROR_SHARD_BYTES): the apiserver refuses a ConfigMap
# whose data and binaryData (keys and decoded values) exceed CONFIGMAP_LIMIT; a chunk leaves
# room for the keys and the head's metadata
CONFIGMAP_LIMIT = 1_048_576
MIN_SHARD_BYTES = 1024
MAX_SHARD_BYTES = CONFIGMAP_LIMIT - 16 * 1024
DEFAULT_SHARD_BYTES = CONFIGMAP_LIMIT - 32 * 1024
OFF = ("off", "none", "")  # an interval that may be switched off: these, or 0 seconds
MAX_SETTING = 64 * 1024  # the longest text setting (lists of vCenters, of files)


class SettingError(ValueError):
    """One bad setting; the message names the variable."""


class InvalidSetting(SystemExit):
    """Start-up stopped by a bad setting (the message names it): a process exits 1 with it,
    `vcm` 2 (bad input)."""


def variable(info: ValidationInfo) -> str:
    """The environment variable of the field being validated."""
    return PREFIX + str(info.field_name).upper()


def duration(*, maximum: float = YEAR, minimum: float = 0.0, floor: float = 0.0,
             off: tuple[str, ...] = (), off_value: float | None = None,
             short: str = "too short") -> BeforeValidator:
    """Seconds from seconds or a duration ("24h"), within [minimum, maximum]; raised to `floor`.
    A value in `off` (any case, trimmed) is `off_value`. `short` words the message for a value under
    `minimum`: "too short" (`12s is too short (at least 60s)`) or "at least" (`must be at
    least 1s`)."""

    def parse(value: Any, info: ValidationInfo) -> float | None:
        name = variable(info)
        if isinstance(value, str) and value.strip().lower() in off:
            return off_value
        try:
            seconds = parse_duration(value, name, maximum=maximum)
        except InvalidRequest as exc:  # its message names the variable
            raise SettingError(str(exc)) from None
        if seconds < minimum:
            raise SettingError(f"{name}: {seconds:g}s is too short (at least {minimum:g}s)"
                               if short == "too short" else
                               f"{name}: must be at least {minimum:g}s")
        return max(seconds, floor)

    return BeforeValidator(parse)


def _strategy(value: Any, info: ValidationInfo) -> str:
    if value not in STRATEGIES:
        raise SettingError(f"{variable(info)}={value!r}: use one of " + ", ".join(STRATEGIES))
    return str(value)


def _max_shards(value: Any, info: ValidationInfo) -> int:
    """A whole number within 0..999; unset or empty: DEFAULT_MAX_SHARDS."""
    raw = str(value).strip()
    if not raw:
        return DEFAULT_MAX_SHARDS
    try:
        shards = int(raw)
        if not 0 <= shards <= 999:
            raise ValueError
    except ValueError:
        raise SettingError(f"{variable(info)}={raw!r}: a whole number within 0..999") from None
    return shards


def _number(kind: type[int] | type[float], minimum: float, maximum: float) -> BeforeValidator:
    """int() or float() of the text, nothing more (no durations), within [minimum, maximum]."""

    def parse(value: Any, info: ValidationInfo) -> int | float:
        what = "a whole number" if kind is int else "a number"
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise SettingError(f"{variable(info)}={value!r}: not {what}") from None
        if not minimum <= number <= maximum:  # NaN too
            low, high = (f"{int(minimum)}", f"{int(maximum)}") if kind is int else \
                (f"{minimum:g}", f"{maximum:g}")
            raise SettingError(f"{variable(info)}={value!r}: {what} from {low} to {high}")
        return number

    return BeforeValidator(parse)


def _redis_url(value: Any, info: ValidationInfo) -> str:
    """A URL that Celery (broker, results) and redis-py (the ledger) both take: redis:// or
    rediss://, a port within range, a database number, and only the query options every
    client honours (`workers.redis_url`). The URL itself is never repeated in the message: it
    may hold a password."""
    raw = str(value).strip()
    try:
        check_redis_url(raw, variable(info))
    except ValueError as exc:  # its message names the variable
        raise SettingError(str(exc)) from None
    return raw


_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _comma_text(value: Any, info: ValidationInfo) -> tuple[str, str]:
    """(the variable's name, its comma-separated text), a list given as one; text that is no
    setting's (too long, control characters) refused naming the variable."""
    name = variable(info)
    if isinstance(value, tuple | list):
        value = ",".join(map(str, value))
    raw = str(value)
    problem = text_problem(raw, MAX_SETTING)
    if problem:
        raise SettingError(f"{name}: {problem}")
    return name, raw


def _namespaces(value: Any, info: ValidationInfo) -> tuple[str, ...]:
    """Comma-separated Kubernetes namespace names (DNS-1123 labels), at least one."""
    name, raw = _comma_text(value, info)
    names = tuple(dict.fromkeys(x.strip() for x in raw.split(",") if x.strip()))
    if not names:
        raise SettingError(f"{name}: name at least one namespace")
    for ns in names:
        if not _NAMESPACE.match(ns):
            raise SettingError(f"{name}: {ns!r} is not a namespace name (lower-case letters, "
                               "digits and '-', at most 63)")
    return names


def _pauses(value: Any, info: ValidationInfo) -> tuple[float, ...]:
    """Comma-separated durations (seconds or "2s"), each more than 0 and at most an hour, at
    least one, none empty."""
    name, raw = _comma_text(value, info)
    items = [x.strip() for x in raw.split(",")]
    if not any(items):
        raise SettingError(f"{name}: name at least one pause")
    if not all(items):  # each later pause would be that of another try
        raise SettingError(f"{name}: {raw!r}: an empty pause between commas")
    pauses = []
    for item in items:
        try:
            seconds = parse_duration(item, name, maximum=3600)
        except InvalidRequest as exc:  # its message names the variable
            raise SettingError(str(exc)) from None
        if seconds <= 0:
            raise SettingError(f"{name}: {item!r}: a pause must be longer than 0s")
        pauses.append(seconds)
    return tuple(pauses)


# what a worker expands in VCM_WORKER_LIVENESS_FILE with Celery's node_format: %n, the node
# name before its @; %h, the host after it; %d, that host's domain
NODE_NAME_KEYS = ("n", "h", "d")


def _liveness_file(value: Any, info: ValidationInfo) -> str | None:
    """A path, or None for off/none/empty; text no path holds (control characters, too long)
    refused naming the variable."""
    raw = str(value).strip()
    if raw.lower() in OFF:
        return None
    problem = text_problem(raw, 4096)
    if problem:
        raise SettingError(f"{variable(info)}: {problem}")
    unknown = sorted(set(re.findall(r"%(\w)", raw)) - set(NODE_NAME_KEYS))
    if unknown:  # what Celery's node_format, which expands it, would refuse
        raise SettingError(f"{variable(info)}={raw!r}: %{unknown[0]} is not one of "
                           + ", ".join(f"%{k}" for k in NODE_NAME_KEYS))
    return raw


def _none_if_empty(value: Any) -> Any:
    return value or None


# what someone used to GOVC_INSECURE=1 might write: verification off for every vCenter, which
# is not offered (each vCenter is listed on its own)
SWITCHES = ("1", "true", "yes", "on", "*", "all")


def _vcenter_text(*, listing: bool = False, everyone: bool = True) -> BeforeValidator:
    """Text of a vCenter setting (a path, or `listing`: comma-separated vCenters), checked for
    what breaks logs and messages. `everyone=False`: a switch for every vCenter is refused."""

    def parse(value: Any, info: ValidationInfo) -> str:
        name, raw = variable(info), str(value)
        problem = text_problem(raw, MAX_SETTING)
        if problem:
            raise SettingError(f"{name}: {problem}")
        if listing and not everyone:
            for item in raw.split(","):
                if item.strip().lower() in SWITCHES:
                    raise SettingError(
                        f"{name}={item.strip()!r}: list the vCenters whose certificate is not "
                        "verified, comma-separated; verification cannot be switched off for "
                        "every vCenter at once")
        return raw.strip()

    return BeforeValidator(parse)


Duration = Annotated[float, duration()]
OptionalText = Annotated[str | None, BeforeValidator(_none_if_empty)]


class EnvSettings(BaseSettings):
    """Settings read from `VCM_<FIELD>` variables (any case); build with `from_env`."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, case_sensitive=False, extra="ignore",
                                      frozen=True, validate_default=True)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """The settings from the environment (or from `environ` instead), with `overrides`
        (field names: `redis_url=...`) over it. A bad value: SystemExit naming the variable."""
        try:
            if environ is None:
                return cls(**overrides)
            return cls.model_validate({**from_mapping(cls, environ), **overrides})
        except ValidationError as exc:
            raise InvalidSetting(f"invalid setting {first_problem(exc)}") from None


class Settings(EnvSettings):
    """Every `VCM_*` setting but the shim's own (`api_shim.settings`)."""

    strategy: Annotated[str, BeforeValidator(_strategy)] = "least-utilized"
    redis_url: Annotated[str, BeforeValidator(_redis_url)] = Field(
        default="redis://127.0.0.1:6379/0", repr=False)  # may hold the password
    pools_file: str = str(DEFAULT_POOLS)
    # the ledger mirror: a ConfigMap "namespace/name" (checked when the mirror is built), else
    # the file ("off": none)
    configmap: OptionalText = None
    mirror_file: str = str(Path(".vcm") / "ledger.json")
    # where `vcm pools cordon` and the other configuration commands make their changes: the
    # ConfigMap "namespace/name" the pools file is mounted from (unset: the pools file)
    pools_configmap: OptionalText = None
    lease_ttl: Duration = Field(default="24h")
    max_lease_lifetime: Duration = Field(default="7d")
    reap_interval: Duration = Field(default="5m")
    rollup_interval: Duration = Field(default="60s")
    api_tokens: str = Field(default="", repr=False)
    keep_released: Duration = Field(default="7d")
    mirror_max_delay: Duration = Field(default="0")
    usage_retention: Duration = Field(default="7d")
    # live vCenter health older than this counts as unknown
    inventory_stale: Duration = Field(default="30m")

    # ConfigMap slots `name-0`… the RBAC Role must list (0: the head only)
    mirror_max_shards: Annotated[int, BeforeValidator(_max_shards)] = DEFAULT_MAX_SHARDS
    # bytes of compressed snapshot per ConfigMap (the head's first chunk, each shard's)
    mirror_shard_bytes: Annotated[int, _number(int, MIN_SHARD_BYTES, MAX_SHARD_BYTES)] = \
        DEFAULT_SHARD_BYTES
    # the longest each Kubernetes API request of the ConfigMap mirror may take
    mirror_timeout: Annotated[float, duration(minimum=0.1, maximum=600,
                                              short="at least")] = Field(default="5s")
    # the longest pause between mirror saves under load (seconds; see workers/publisher/thread.py)
    mirror_commit_window: Annotated[float, _number(float, 0, 60)] = 0.1

    # Celery (celeryconfig.py)
    # seconds; at 0 every task still running is handed out again each second
    visibility_timeout: Annotated[int, _number(int, 1, 7 * 86400)] = 600
    result_ttl: Annotated[float, duration(minimum=60)] = Field(default="1d")
    query_result_ttl: Annotated[float, duration(minimum=1)] = Field(default="5m")
    # clients (vcm) send a task again, same task id, when no worker took it this long
    resend_after: Annotated[float, duration(minimum=1)] = Field(default="15s")

    # a worker's liveness file (workers/liveness.py, tasks/liveness.py): its modification time
    # is kept VCM_WORKER_STUCK_AFTER ahead while the worker shows progress; Celery's %n (the
    # node name before its @), %h and %d are expanded; off: none
    worker_liveness_file: Annotated[str | None, BeforeValidator(_liveness_file)] = \
        "/tmp/vcm-%n.alive"
    worker_stuck_after: Annotated[float, duration(minimum=1, maximum=86400,
                                                  short="at least")] = Field(default="5m")

    # namespace-bound leases (workers/service/namespaces.py): None when pruning is off
    namespace_prune_interval: Annotated[float | None, duration(minimum=1, off=("0", *OFF))] = \
        Field(default="5m")
    namespace_timeout: Annotated[float, duration(maximum=600, floor=0.1)] = Field(default="10s")
    # only leases taken this long before a run's list call are compared with the list
    namespace_grace: Annotated[float, duration(maximum=600)] = Field(default="2s")

    # live vCenter health (workers/adapters/vcenter/inventory.py); an interval of 0 or off: no sync
    inventory_interval: Annotated[float, duration(maximum=86400, off=OFF, off_value=0.0)] = \
        Field(default="5m")
    inventory_timeout: Annotated[float, duration(maximum=3600, floor=1)] = Field(default="30s")
    # how often a worker reads the live health from the ledger (placement and estimates)
    health_refresh: Annotated[float, duration(maximum=3600)] = Field(default="5s")

    # vCenter access (workers/adapters/vcenter/access.py). Credentials: per vCenter
    # (`vc1=user:pass,…`), and one shared credential sent only to the vCenters
    # `vcenter_shared_credential_for` lists ("*": every vCenter)
    vcenter_username: OptionalText = None
    vcenter_password: str = Field(default="", repr=False)
    vcenter_credentials: str = Field(default="", repr=False)
    vcenter_shared_credential_for: Annotated[str, _vcenter_text(listing=True)] = ""
    # certificates: CA bundles (`path,…` for every vCenter, `vc1=path` for one; unset: the
    # system's trust store), pinned thumbprints (a govc known_hosts file), and the vCenters
    # whose certificate is not verified at all
    vcenter_ca_certs: Annotated[str, _vcenter_text()] = ""
    vcenter_known_hosts: Annotated[str, _vcenter_text()] = ""
    vcenter_insecure: Annotated[str, _vcenter_text(listing=True, everyone=False)] = ""

    # the Lease controller (workers/controller): the namespaces whose Leases it answers and
    # where it publishes Pools and Networks; how often it renews the ledger leases of its
    # Leases, and how often it compares them with the ledger and refreshes the Pools' status
    controller_namespaces: Annotated[tuple[str, ...], NoDecode, BeforeValidator(_namespaces)] = \
        Field(default="vsphere-infra-helpers")
    controller_renew_interval: Annotated[float, duration(minimum=1, maximum=7 * 86400)] = \
        Field(default="1h")
    controller_sync_interval: Annotated[float, duration(minimum=0.05, maximum=3600,
                                                        short="at least")] = \
        Field(default="10s")
    # how long it waits for a namespace's first publishing of the Pools and Networks: at start
    # (then it serves the Leases all the same), and before a grant names them (then it looks
    # each up); and how long the adopt of a Fulfilled Lease waits for the first read of the
    # ledger (then it is sent for the Lease's own owner)
    controller_publish_wait: Annotated[float, duration(maximum=3600)] = Field(default="30s")
    controller_ledger_wait: Annotated[float, duration(maximum=3600)] = Field(default="10s")
    # the pauses between the tries of a Lease's call that failed (the API server answered
    # 5xx or 429, the workers did not answer), the last one repeated
    controller_retry_pauses: Annotated[tuple[float, ...], NoDecode, BeforeValidator(_pauses)] = \
        Field(default="1s,2s,5s,10s,30s")

    @property
    def mirror_enabled(self) -> bool:
        return bool(self.configmap) or self.mirror_file.lower() not in ("off", "none", "")


def shown_url(url: str) -> str:
    """A Redis URL as it may be printed or logged: its password (in the user part, which may
    hold unescaped ``@ / ? #``, or a `password` query parameter) replaced by ``**``, as Celery
    shows its broker."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    user, at, host = rest.rpartition("@")  # a host name never holds "@"
    if at and ":" in user:
        user = user.partition(":")[0] + ":**"
    where, mark, query = host.partition("?")
    if mark:
        query = "&".join(f"{p.partition('=')[0]}=**" if p.partition("=")[0].lower() == "password"
                         else p for p in query.split("&"))
    return f"{scheme}://{user}{at}{where}{mark}{query}"


def from_mapping(model: type[BaseSettings], environ: Mapping[str, str]) -> dict[str, str]:
    """The fields of `model` set in `environ`, as its env source finds them (prefix, any case)."""
    prefix = str(model.model_config.get("env_prefix", "")).lower()
    values: dict[str, str] = {}
    for key, value in environ.items():
        name = key.lower()
        if name.startswith(prefix) and name[len(prefix):] in model.model_fields:
            values[name[len(prefix):]] = value
    return values


def first_problem(exc: ValidationError, prefix: str = PREFIX) -> str:
    """The first error of a validation, as `VARIABLE: problem`."""
    error = exc.errors()[0]
    original = (error.get("ctx") or {}).get("error")
    if isinstance(original, SettingError):
        return str(original)
    where = prefix + ".".join(str(part) for part in error["loc"]).upper()
    return f"{where}: {error['msg']}"
