"""The one settings class of the API deployable (environment prefix ``STADJERSPAS_``).

Built once (by the CLI or a test) and passed to :func:`api.runtime.Runtime.start` and
:func:`api.main.create_app`; nothing else reads the environment.

Development (``STADJERSPAS_ENV=development``, the default) runs with no set-up: an embedded anvil
under ``var/``, the well-known anvil dev-mnemonic accounts as keys, a fixed token-signing secret,
development logins (see :mod:`api.auth`) and fixed bearer tokens. Those defaults exist **only**
in development. In production every key comes from an encrypted keystore (path + password) and
``STADJERSPAS_AUTH_SECRET`` (at least 32 bytes) must be set; a missing one fails validation with
a message naming the environment variables to set. The slice's static bearer tokens
(``STADJERSPAS_ADMIN_TOKEN`` ...) are development-only and refused in production.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ledger.settlement import DebtorAccount, DebtorAccountInvalid
from ledger.store.db import default_sqlite_url

__all__ = [
    "DEV_AUTH_SECRET",
    "DEV_DEBTOR_IBAN",
    "DEV_DEBTOR_NAME",
    "DEV_KEYSTORE_PASSWORD",
    "DEV_MERCHANT_COUNT",
    "ENV_PREFIX",
    "PROJECT_ROOT",
    "Settings",
]

ENV_PREFIX = "STADJERSPAS_"
#: How many demo partners development enrols (merchant ids 1, 2, 3).
DEV_MERCHANT_COUNT = 3
#: Development only: the partner keystore's password (production must set its own).
DEV_KEYSTORE_PASSWORD = "development-only-partner-keystore-password"  # noqa: S105
#: Development only: the secret bearer tokens are signed with.
DEV_AUTH_SECRET = "development-only-auth-secret-never-use-in-production"  # noqa: S105
#: Development only: the account payout runs are paid from (a well-known example IBAN).
DEV_DEBTOR_NAME = "Gemeente Groningen (development)"
DEV_DEBTOR_IBAN = "NL91ABNA0417164300"
#: The shortest production token-signing secret, in bytes (HMAC-SHA256 key).
MIN_AUTH_SECRET_BYTES = 32

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
    anvil_state_interval_s: int = Field(
        default=1,
        ge=1,
        le=86_400,
        description="How often (seconds) the embedded node writes its state file. What a "
        "killed node loses since then, the reconciler replays from the outbox.",
    )
    anvil_block_time_s: float | None = Field(
        default=None,
        gt=0,
        le=60,
        description="Embedded anvil mines a block every this many seconds, as a QBFT network "
        "does (e.g. 2); unset: a block per transaction (anvil's automine).",
    )
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
        default_factory=list,
        description="Optional, bring your own key: one keystore per merchant; merchant id i is "
        "entry i-1. Partners enrolled by the service get a key in the partner keystore instead.",
    )
    merchant_keystore_password: SecretStr | None = None
    keystore_password: SecretStr | None = Field(
        default=None,
        description="Password of the partner keystore (api.partners): the signing keys the "
        "service creates for enrolled partners, AES-GCM-wrapped under a key derived from it "
        "(required in production, a fixed development-only value otherwise).",
    )

    # -- auth (api.auth) ---------------------------------------------------------------------
    auth_secret: SecretStr | None = Field(
        default=None,
        description="HMAC-SHA256 key bearer tokens are signed with (>= 32 bytes; required in "
        "production, a fixed development-only value otherwise).",
    )
    auth_token_ttl_s: int = Field(
        default=15 * 60, ge=30, le=24 * 3600, description="Terminal and holder token lifetime."
    )
    auth_staff_token_ttl_s: int = Field(
        default=30 * 60, ge=30, le=24 * 3600, description="Staff token lifetime."
    )
    auth_max_failures: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Failed logins per client and account before a lockout.",
    )
    auth_max_client_failures: int = Field(
        default=20,
        ge=1,
        le=10_000,
        description="Failed logins per client, any account.",
    )
    auth_max_account_failures: int = Field(
        default=50,
        ge=1,
        le=100_000,
        description="Failed logins per account, any client, before the account is locked for "
        "everyone (guessing from many addresses).",
    )
    auth_failure_window_s: int = Field(default=15 * 60, ge=1, description="Failures counted over.")
    auth_lockout_s: int = Field(default=15 * 60, ge=1, description="How long a lockout lasts.")
    bootstrap_admin_username: str | None = Field(
        default=None, description="Creates this admin user at start if no staff user exists."
    )
    bootstrap_admin_password: SecretStr | None = None

    # -- static bearer tokens of the slice: development only ---------------------------------
    admin_token: SecretStr | None = None
    holder_token: SecretStr | None = None
    merchant_tokens: dict[int, SecretStr] = Field(
        default_factory=dict, description="Development only: merchant id -> static bearer token."
    )

    # -- behaviour ------------------------------------------------------------------------------
    token_lifetime_s: int = Field(
        default=120, ge=10, le=120, description="Pass token lifetime (at most 120 s)."
    )
    demo_holders: int = Field(
        default=50,
        ge=1,
        le=20_000,
        description="How many demo holders the development seed enrols (benchmarks use more).",
    )
    holder_login_url: str = Field(
        default="http://127.0.0.1:8000/holder/login",
        min_length=8,
        max_length=200,
        pattern=r"^https?://[^\s]+$",
        description=(
            "The holder page's login address as printed on activation letters (the municipality's "
            "public URL in production, e.g. https://stadjerspas.groningen.nl/holder/login)."
        ),
    )
    card_pin_limit: int = Field(
        default=2_500,
        ge=1,
        le=1_000_000,
        description=(
            "The most a printed card moves without the holder's PIN (cents of a Budget scheme, "
            "uses of a Uses scheme): the amount cap of every card token, enforced on chain."
        ),
    )
    receipt_timeout_s: float = Field(default=30.0, gt=0)
    import_max_bytes: int = Field(
        default=20 * 1024 * 1024,
        ge=1024,
        description=(
            "Largest holders or balances CSV an import accepts (bytes): a larger upload is "
            "refused (413 upload_too_large) from its Content-Length, or once that many bytes "
            "arrived, before the file is read."
        ),
    )
    relayer_linger_ms: float = Field(default=2.0, ge=0)
    batch_linger_ms: float = Field(
        default=20.0,
        ge=0,
        le=1000,
        description="How long a merchant's batcher gathers items.",
    )
    batch_max_items: int = Field(default=100, ge=1, le=500)
    batch_max_in_flight: int = Field(
        default=2,
        ge=1,
        le=16,
        description="Batches of one merchant sent and not yet mined at once; what arrives "
        "meanwhile joins the next batch.",
    )
    state_cache_poll_ms: float = Field(
        default=50.0,
        gt=0,
        le=10_000,
        description="How often the scan cache reads the chain's new logs (what other parties "
        "change shows within this interval; this service's own transactions at once).",
    )
    worker_threads: int = Field(
        default=256,
        ge=8,
        le=4096,
        description="Threads for blocking route work (a redemption waits for its batch).",
    )
    run_indexer: bool = Field(
        default=True, description="Mirror the chain into the index tables inside this process."
    )
    index_confirmations: int = Field(
        default=0, ge=0, le=1000, description="Blocks the index stays behind the head."
    )
    reconcile_interval_s: float = Field(
        default=2.0,
        gt=0,
        le=600,
        description="How often the reconciler compares the outbox with the chain (it also runs "
        "at start and at once when the node restarted).",
    )
    finality_s: float = Field(
        default=10.0,
        ge=0,
        le=86_400,
        description="How long a mined transaction stays under watch before the outbox calls it "
        "final (the embedded node persists its state every second; on QBFT a mined block is "
        "final at once, but a node restored from a snapshot is caught by its nonces anyway).",
    )

    # -- HTTP hardening (api.middleware): CORS, request size, rate limits ------------------------
    cors_allow_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed cross-origin requests (exact, e.g. https://pas.example.nl); "
        "none by default.",
    )
    max_request_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, le=256 * 1024 * 1024, description="Larger bodies get 413."
    )
    rate_limit_per_s: float = Field(
        default=50.0,
        ge=0,
        description="Requests per second per client (bearer subject, else IP); 0 disables. "
        "In-process: each worker counts on its own.",
    )
    rate_limit_burst: int = Field(default=200, ge=1, description="Token-bucket size per client.")

    # -- throttling shared by every process (api.throttle): Redis, proxies ----------------------
    redis_url: str | None = Field(
        default=None,
        description="Redis that login lockouts and rate limits are counted in, shared by every "
        "API process (redis://host:port/db). Development: redis://127.0.0.1:6379/0 when it "
        "answers, else counted in-process. Production: required unless single_process.",
    )
    redis_prefix: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="Key prefix in Redis (default: stadjerspas: in production, one per "
        "database in development).",
    )
    single_process: bool = Field(
        default=False,
        description="Production only: exactly one process serves, so lockouts and rate limits "
        "may be counted in-process without Redis.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Reverse proxies (IP addresses or CIDR networks) whose X-Forwarded-For is "
        "believed; from anyone else the socket peer is the client.",
    )

    # -- payouts (ledger.settlement): the municipality's account the pain.001 pays from -------
    payout_debtor_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=70,
        description="Account holder name of the paying account (required in production).",
    )
    payout_debtor_iban: str | None = Field(
        default=None,
        min_length=1,
        max_length=42,
        description="IBAN of the paying account (required in production; checked with mod-97).",
    )
    payout_debtor_bic: str | None = Field(
        default=None, max_length=11, description="BIC of the paying account (optional)."
    )

    @field_validator("var_dir", "project_root", "build_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # absolute, because the embedded anvil runs with its state directory as working directory
        return value.expanduser().resolve() if value is not None else None

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for entry in value:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"{_env('trusted_proxies')}: {entry!r} is not an IP address or CIDR network "
                    "(e.g. 10.0.0.5, 10.0.0.0/8, 2001:db8::/32)"
                ) from None
        return [entry.strip() for entry in value]

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"{_env('redis_url')}: {value.split('@')[-1]!r} must start with redis://, "
                "rediss:// or unix://"
            )
        return value

    @model_validator(mode="after")
    def _defaults_and_secrets(self) -> Self:
        if self.env == "development":
            dev = "development-only"
            if self.auth_secret is None:
                object.__setattr__(self, "auth_secret", SecretStr(DEV_AUTH_SECRET))
            if self.keystore_password is None:
                object.__setattr__(self, "keystore_password", SecretStr(DEV_KEYSTORE_PASSWORD))
            if self.admin_token is None:
                object.__setattr__(self, "admin_token", SecretStr(f"{dev}-admin-token"))
            if self.holder_token is None:
                object.__setattr__(self, "holder_token", SecretStr(f"{dev}-holder-token"))
            if not self.merchant_tokens:
                count = len(self.merchant_keystores) or DEV_MERCHANT_COUNT
                tokens = {i: SecretStr(f"{dev}-merchant-{i}-token") for i in range(1, count + 1)}
                object.__setattr__(self, "merchant_tokens", tokens)
            if self.payout_debtor_name is None and self.payout_debtor_iban is None:
                object.__setattr__(self, "payout_debtor_name", DEV_DEBTOR_NAME)
                object.__setattr__(self, "payout_debtor_iban", DEV_DEBTOR_IBAN)
            self._check_debtor()
            return self
        missing = self.missing_production_settings()
        if missing:
            raise ValueError(
                "production settings are incomplete (secrets are never defaulted outside "
                "development); set: " + ", ".join(missing)
            )
        secret = self.auth_secret.get_secret_value() if self.auth_secret is not None else ""
        if len(secret.encode()) < MIN_AUTH_SECRET_BYTES or secret == DEV_AUTH_SECRET:
            raise ValueError(
                f"{_env('auth_secret')} must be a random secret of at least "
                f"{MIN_AUTH_SECRET_BYTES} bytes in production"
            )
        keystore = self.keystore_password.get_secret_value() if self.keystore_password else ""
        if len(keystore) < 12 or keystore == DEV_KEYSTORE_PASSWORD:
            raise ValueError(
                f"{_env('keystore_password')} must be a secret of at least 12 characters in "
                "production (not the development value)"
            )
        static = [
            _env(name)
            for name in ("admin_token", "holder_token", "merchant_tokens")
            if getattr(self, name)
        ]
        if static:
            raise ValueError(
                "static bearer tokens are development-only; unset "
                + ", ".join(static)
                + " (staff, terminals and holders log in at POST /auth/token)"
            )
        if (self.bootstrap_admin_username is None) != (self.bootstrap_admin_password is None):
            raise ValueError(
                f"set both {_env('bootstrap_admin_username')} and "
                f"{_env('bootstrap_admin_password')}, or neither"
            )
        self._check_debtor()
        return self

    def _check_debtor(self) -> None:
        names = [_env("payout_debtor_name"), _env("payout_debtor_iban")]
        if (self.payout_debtor_name is None) != (self.payout_debtor_iban is None):
            raise ValueError(f"set both {names[0]} and {names[1]}, or neither")
        if self.payout_debtor_iban is None:
            return
        try:
            self.payout_debtor.validated()
        except DebtorAccountInvalid as exc:
            raise ValueError(
                f"{names[1]} / {_env('payout_debtor_bic')}: {exc} (an IBAN must match its "
                "country's format and pass the mod-97 check digits)"
            ) from None

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
        if self.merchant_keystores and self.merchant_keystore_password is None:
            missing.append(_env("merchant_keystore_password"))
        if self.keystore_password is None:
            missing.append(_env("keystore_password"))
        if self.auth_secret is None:
            missing.append(_env("auth_secret"))
        missing.extend(
            _env(name)
            for name in ("payout_debtor_name", "payout_debtor_iban")
            if getattr(self, name) is None
        )
        return missing

    # -- derived --------------------------------------------------------------------------------

    @property
    def is_development(self) -> bool:
        return self.env == "development"

    @property
    def payout_debtor(self) -> DebtorAccount:
        """The account payout runs pay from (a request may name another)."""
        if self.payout_debtor_name is None or self.payout_debtor_iban is None:
            raise DebtorAccountInvalid(
                f"no debtor account configured: set {_env('payout_debtor_name')} and "
                f"{_env('payout_debtor_iban')}"
            )
        return DebtorAccount(
            name=self.payout_debtor_name, iban=self.payout_debtor_iban, bic=self.payout_debtor_bic
        )

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
