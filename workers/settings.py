"""Settings from the environment (listed in the README). Every one has a laptop-friendly default."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .core.models import parse_duration
from .core.placement import STRATEGIES

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POOLS = ROOT / "examples" / "pools.yaml"


def _duration(name: str, default: str) -> float:
    raw = os.environ.get(name, default)
    try:
        return parse_duration(raw, name, maximum=365 * 86400)
    except Exception as exc:  # the InvalidRequest message names the variable
        raise SystemExit(f"invalid setting {exc}") from None


@dataclass(frozen=True)
class Settings:
    redis_url: str
    pools_file: str
    configmap: str | None
    mirror_file: str
    lease_ttl: float
    max_lease_lifetime: float
    reap_interval: float
    rollup_interval: float
    strategy: str
    api_tokens: str
    keep_released: float
    mirror_max_delay: float
    usage_retention: float
    inventory_stale: float = 1800.0  # live vCenter health older than this counts as unknown

    @property
    def mirror_enabled(self) -> bool:
        return bool(self.configmap) or self.mirror_file.lower() not in ("off", "none", "")

    @classmethod
    def from_env(cls) -> Settings:
        strategy = os.environ.get("VCM_STRATEGY", "least-utilized")
        if strategy not in STRATEGIES:
            raise SystemExit(f"invalid setting VCM_STRATEGY={strategy!r}: use one of "
                             + ", ".join(STRATEGIES))
        return cls(
            redis_url=os.environ.get("VCM_REDIS_URL", "redis://127.0.0.1:6379/0"),
            pools_file=os.environ.get("VCM_POOLS_FILE", str(DEFAULT_POOLS)),
            configmap=os.environ.get("VCM_CONFIGMAP") or None,
            mirror_file=os.environ.get("VCM_MIRROR_FILE", str(Path(".vcm") / "ledger.json")),
            lease_ttl=_duration("VCM_LEASE_TTL", "24h"),
            max_lease_lifetime=_duration("VCM_MAX_LEASE_LIFETIME", "7d"),
            reap_interval=_duration("VCM_REAP_INTERVAL", "5m"),
            rollup_interval=_duration("VCM_ROLLUP_INTERVAL", "60s"),
            strategy=strategy,
            api_tokens=os.environ.get("VCM_API_TOKENS", ""),
            keep_released=_duration("VCM_KEEP_RELEASED", "7d"),
            mirror_max_delay=_duration("VCM_MIRROR_MAX_DELAY", "0"),
            usage_retention=_duration("VCM_USAGE_RETENTION", "7d"),
            inventory_stale=_duration("VCM_INVENTORY_STALE", "30m"),
        )
