"""The one settings class of the API deployable (environment prefix ``STADJERSPAS_``).

Built once (by the CLI or a test) and passed to :func:`api.runtime.Runtime.start` and
:func:`api.main.create_app`; nothing else reads the environment.

Development (``STADJERSPAS_ENV=development``, the default) runs with no set-up: an embedded anvil
under ``var/``, the well-known anvil dev-mnemonic accounts as keys and fixed bearer tokens. Those
defaults exist **only** in development. In production every key comes from an encrypted keystore
(path + password) and every bearer token must be set; a missing one fails validation with a
message naming the environment variables to set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ledger.store.db import default_sqlite_url

__all__ = ["DEV_MERCHANT_COUNT", "ENV_PREFIX", "PROJECT_ROOT", "Settings"]

ENV_PREFIX = "STADJERSPAS_"
#: How many merchant keys development takes from the dev mnemonic (accounts 3, 4, 5).
DEV_MERCHANT_COUNT = 3

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str) -> str:
    return ENV_PREFIX + name.upper()


class Settings(BaseSettings):
    """Configuration of the API service. Field ``x`` is read from ``STADJERSPAS_X``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="ignore",
        frozen=True,
    )

    env: Literal["development", "production"] = "development"

    # -- where things live ----------------------------------------------------------------------
    var_dir: Path = Field(default=Path("var"), description="State: anvil, deployment, database.")
    project_root: Path = Field(
        default=PROJECT_ROOT, description="Checkout with contracts/, node_modules/ and tools/."
    )
    build_dir: Path | None = Field(
        default=None, description="Compiler artifact cache (default: <var_dir>/build)."
    )
    database_url: str | None = Field(
        default=None,
        description=(
            "Database URL: postgresql://user:password@host:port/db in production (psycopg 3), "
            "or sqlite:///<path> (default: SQLite <var_dir>/stadjerspas.db). Migrated at start."
        ),
    )

    # -- chain ----------------------------------------------------------------------------------
    rpc_url: str | None = Field(
        default=None,
        description="JSON-RPC endpoint. Unset: start an embedded anvil under <var_dir>/anvil.",
    )
    anvil_port: int = Field(
        default=8545, ge=0, le=65535, description="Embedded anvil port (0: any)."
    )
    anvil_chain_id: int = Field(default=31337, ge=1)
    auto_deploy: bool | None = Field(
        default=None, description="Deploy when no deployment record exists (default: development)."
    )
    demo_seed: bool | None = Field(
        default=None, description="Load demo data on first start (default: development)."
    )
    reversal_window_s: int = Field(default=14 * 24 * 3600, ge=0)

    # -- HTTP -----------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    # -- keys (encrypted keystores; development falls back to the anvil dev mnemonic) ----------
    admin_keystore: Path | None = None
    admin_keystore_password: SecretStr | None = None
    issuer_keystore: Path | None = None
    issuer_keystore_password: SecretStr | None = None
    pass_signer_keystore: Path | None = None
    pass_signer_keystore_password: SecretStr | None = None
    merchant_keystores: list[Path] = Field(
        default_factory=list, description="One keystore per merchant; merchant id i is entry i-1."
    )
    merchant_keystore_password: SecretStr | None = None

    # -- bearer tokens per role (the slice's stand-in for real auth) ----------------------------
    admin_token: SecretStr | None = None
    holder_token: SecretStr | None = None
    merchant_tokens: dict[int, SecretStr] = Field(
        default_factory=dict, description="Merchant id -> bearer token of that merchant."
    )

    # -- behaviour ------------------------------------------------------------------------------
    token_lifetime_s: int = Field(default=120, ge=10, le=900, description="Pass token lifetime.")
    receipt_timeout_s: float = Field(default=30.0, gt=0)
    relayer_linger_ms: float = Field(default=2.0, ge=0)

    @field_validator("var_dir", "project_root", "build_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # absolute, because the embedded anvil runs with its state directory as working directory
        return value.expanduser().resolve() if value is not None else None

    @model_validator(mode="after")
    def _defaults_and_secrets(self) -> Self:
        if self.env == "development":
            dev = "development-only"
            if self.admin_token is None:
                object.__setattr__(self, "admin_token", SecretStr(f"{dev}-admin-token"))
            if self.holder_token is None:
                object.__setattr__(self, "holder_token", SecretStr(f"{dev}-holder-token"))
            if not self.merchant_tokens:
                count = len(self.merchant_keystores) or DEV_MERCHANT_COUNT
                tokens = {i: SecretStr(f"{dev}-merchant-{i}-token") for i in range(1, count + 1)}
                object.__setattr__(self, "merchant_tokens", tokens)
            return self
        missing = self.missing_production_settings()
        if missing:
            raise ValueError(
                "production settings are incomplete (secrets are never defaulted outside "
                "development); set: " + ", ".join(missing)
            )
        return self

    def missing_production_settings(self) -> list[str]:
        """Environment variables production needs that are unset."""
        missing: list[str] = []
        if self.rpc_url is None:
            missing.append(_env("rpc_url"))
        for role in ("admin", "issuer", "pass_signer"):
            if getattr(self, f"{role}_keystore") is None:
                missing.append(_env(f"{role}_keystore"))
            if getattr(self, f"{role}_keystore_password") is None:
                missing.append(_env(f"{role}_keystore_password"))
        if not self.merchant_keystores:
            missing.append(_env("merchant_keystores"))
        if self.merchant_keystore_password is None:
            missing.append(_env("merchant_keystore_password"))
        if self.admin_token is None:
            missing.append(_env("admin_token"))
        if self.holder_token is None:
            missing.append(_env("holder_token"))
        if not self.merchant_tokens:
            missing.append(_env("merchant_tokens"))
        return missing

    # -- derived --------------------------------------------------------------------------------

    @property
    def is_development(self) -> bool:
        return self.env == "development"

    @property
    def deploys_automatically(self) -> bool:
        return self.auto_deploy if self.auto_deploy is not None else self.is_development

    @property
    def seeds_demo(self) -> bool:
        return self.demo_seed if self.demo_seed is not None else self.is_development

    @property
    def anvil_dir(self) -> Path:
        return self.var_dir / "anvil"

    @property
    def deployment_file(self) -> Path:
        return self.var_dir / "deployment.json"

    @property
    def artifacts_dir(self) -> Path:
        return self.build_dir if self.build_dir is not None else self.var_dir / "build"

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url is not None:
            return self.database_url
        return default_sqlite_url(self.var_dir)
