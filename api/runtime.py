"""The service runtime: chain, contract, keys, relayers and store, started once per process.

:meth:`Runtime.start` does, in order:

1. open the store (``STADJERSPAS_DATABASE_URL``; SQLite under ``var/`` by default), check that
   it can be reached (one clear line otherwise) and run the Alembic migrations to head;
2. attach to ``STADJERSPAS_RPC_URL``, or start the embedded anvil with its state under
   ``var/anvil`` (development only: production must name a node);
3. compile the contracts (cached by source hash);
4. deploy on first start and save ``var/deployment.json``; on later starts check that record
   against the node (same chain, code present, same ABI) and refuse to run otherwise;
5. seed the demo data once (development), single-threaded with the issuer key;
6. start one relayer per sending key (issuer, each merchant): from then on every
   state-changing call goes through a relayer; and one
   :class:`~ledger.batcher.RedemptionBatcher` per merchant relayer, so concurrent redemptions
   of a merchant become few ``redeemBatch`` transactions.

Merchant keys: each partner enrolled by the service (:mod:`api.partners`, the demo partners
too) has a key in the partner keystore (:mod:`api.partner_keystore`), opened at start; a
partner enrolled while the service runs gets its relayer and batcher at once
(:meth:`Runtime.start_merchant`, the same path start-up takes).
``STADJERSPAS_MERCHANT_KEYSTORES`` still brings your own key for merchant ids 1..n.

:meth:`Runtime.close` sends what the batchers hold, drains the relayers, closes the store and
stops anvil (which dumps its state), so the next start finds every balance and redemption.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Self

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_hash.auto import keccak
from pydantic import SecretStr
from web3 import HTTPProvider, Web3

from api.code_keys import activation_code_key
from api.demo import seed_demo
from api.partner_keystore import KeystoreError, PartnerKeystore
from api.settings import Settings
from api.store import ApiStore
from ledger.batcher import RedemptionBatcher
from ledger.batcher import RedemptionOutcome as BatchOutcome
from ledger.client import ROLES, LedgerClient
from ledger.compiler import Artifacts, compile_contracts
from ledger.deploy import (
    Deployment,
    RoleGrant,
    check_deployment,
    deploy_ledger,
    load_deployment,
    save_deployment,
)
from ledger.errors import LedgerError
from ledger.indexer.checkpoint import IndexStatus, index_state
from ledger.indexer.fetch import RetryPolicy
from ledger.indexer.follow import Indexer, IndexerConfig
from ledger.node import DEV_MNEMONIC, AnvilConfig, AnvilNode
from ledger.outbox import open_outbox
from ledger.reconciler import Reconciler, ReconcileRefused
from ledger.relayer import Relayer, TxHandle, TxReceipt, TxRequest
from ledger.rpc import RpcClient
from ledger.state_cache import LedgerStateCache
from ledger.store.base import StoreError
from wallet import Domain, WalletError, load_keystore

if TYPE_CHECKING:
    from api.redemptions import ReconcilerLoop

__all__ = ["DEV_ACCOUNT_INDEX", "Runtime", "ServiceKeys", "StartupError", "load_service_keys"]

log = logging.getLogger(__name__)

#: The longest the relayers wait for the reconciler after the embedded node restarted.
RESTART_HOLD_S = 15.0

#: Development only: which account of the anvil dev mnemonic plays which role (partners get
#: keys from the partner keystore, never from the mnemonic).
DEV_ACCOUNT_INDEX = {"admin": 0, "issuer": 1, "pass_signer": 2}

Reporter = Callable[[str], None]
_FINISHED_KEPT = 10_000


def gas_limit(estimate: int) -> int:
    """The gas limit of a call whose preflight estimated ``estimate``: a quarter more, plus a
    margin for state that changes between the estimate and the block."""
    return estimate + estimate // 4 + 20_000


#: The first start waits for the node's state file only if the node writes it this often.
_PERSIST_WAIT_MAX_INTERVAL_S = 5


class StartupError(Exception):
    """The service cannot start; the message says what to fix (one line)."""


@dataclass(frozen=True, slots=True)
class ServiceKeys:
    """The accounts the service signs with. ``partners`` maps merchant id to its account; it
    grows while the service runs (a partner enrolled now: :meth:`Runtime.start_merchant`)."""

    admin: LocalAccount
    issuer: LocalAccount
    pass_signer: LocalAccount
    partners: dict[int, LocalAccount]

    @property
    def merchants(self) -> tuple[LocalAccount, ...]:
        """Every merchant's account, by merchant id."""
        return tuple(account for _, account in sorted(self.partners.items()))

    def merchant_ids(self) -> list[int]:
        return sorted(self.partners)

    def merchant(self, merchant_id: int) -> LocalAccount | None:
        return self.partners.get(merchant_id)


def _dev_account(index: int) -> LocalAccount:
    Account.enable_unaudited_hdwallet_features()
    account: LocalAccount = Account.from_mnemonic(
        DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}"
    )
    return account


def _keystore_account(path: Path, password: SecretStr | None, what: str) -> LocalAccount:
    if password is None:
        raise StartupError(f"the {what} keystore {path} needs a password (…_KEYSTORE_PASSWORD)")
    try:
        key = load_keystore(path, password=password.get_secret_value())
    except FileNotFoundError:
        raise StartupError(f"the {what} keystore {path} does not exist") from None
    except (OSError, WalletError) as exc:
        raise StartupError(f"cannot open the {what} keystore {path}: {exc}") from None
    account: LocalAccount = Account.from_key(key)
    return account


def load_service_keys(settings: Settings) -> ServiceKeys:
    """Keys from keystores; in development, missing ones fall back to the anvil dev mnemonic."""

    def role_key(role: str) -> LocalAccount:
        path: Path | None = getattr(settings, f"{role}_keystore")
        password: SecretStr | None = getattr(settings, f"{role}_keystore_password")
        if path is not None:
            return _keystore_account(path, password, role.replace("_", " "))
        if not settings.is_development:  # settings validation already refuses this
            raise StartupError(f"STADJERSPAS_{role.upper()}_KEYSTORE is required in production")
        return _dev_account(DEV_ACCOUNT_INDEX[role])

    # bring your own key (optional): merchant id i is the i-th listed keystore
    merchants = {
        i: _keystore_account(path, settings.merchant_keystore_password, f"merchant {i}")
        for i, path in enumerate(settings.merchant_keystores, start=1)
    }
    return ServiceKeys(
        admin=role_key("admin"),
        issuer=role_key("issuer"),
        pass_signer=role_key("pass_signer"),
        partners=merchants,
    )


def open_partner_keystore(settings: Settings, store: ApiStore) -> PartnerKeystore:
    password = settings.keystore_password
    if password is None:  # settings validation already refuses this outside development
        raise StartupError("STADJERSPAS_KEYSTORE_PASSWORD is required")
    try:
        return PartnerKeystore(store.db, password=password.get_secret_value())
    except KeystoreError as exc:
        raise StartupError(str(exc)) from None


class KeyedLocks:
    """One lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._locks: dict[object, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: object) -> Iterator[None]:
        with self._mutex:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._mutex:
                lock, users = self._locks[key]
                if users <= 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class AsyncKeyedLocks:
    """:class:`KeyedLocks` for coroutines: one ``asyncio.Lock`` per key, dropped when nobody
    holds or waits for it. Only for code on one event loop."""

    def __init__(self) -> None:
        self._locks: dict[object, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: object) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class Runtime:
    """Everything the API needs at run time. Build with :meth:`start`; :meth:`close` when done."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: ApiStore,
        node: AnvilNode | None,
        rpc_url: str,
        w3: Web3,
        rpc: RpcClient,
        artifacts: Artifacts,
        client: LedgerClient,
        deployment: Deployment,
        keys: ServiceKeys,
        deployed_now: bool,
        keystore: PartnerKeystore,
    ) -> None:
        self.settings = settings
        #: The partner keystore (keys the service created for enrolled partners).
        self.keystore = keystore
        #: the latest expiry of a short-lived token this process signed, per pass id: every
        #: token it signs for a pass is newer than the last (a token serves one checkout)
        self.token_expiries: dict[bytes, int] = {}
        self.token_expiries_lock = threading.Lock()
        self.store = store
        self.node = node
        self.rpc_url = rpc_url
        self.w3 = w3
        self.rpc = rpc
        self.artifacts = artifacts
        self.client = client
        self.deployment = deployment
        self.keys = keys
        self.deployed_now = deployed_now
        self.demo_seeded_now = False
        self.issuer_relayer: Relayer | None = None
        #: The admin account's relayer (role grants, settlements): its transactions go through
        #: the outbox too, so a node restored from older state gets them back.
        self.admin_relayer: Relayer | None = None
        self.merchant_relayers: dict[int, Relayer] = {}
        self.merchant_batchers: dict[int, RedemptionBatcher] = {}
        #: Guards adding a merchant's relayer and batcher while the service runs.
        self._merchants_lock = threading.Lock()
        self._relayers_started = False
        self.key_locks = KeyedLocks()
        #: One redemption per (merchant, Idempotency-Key) at a time (on the event loop).
        self.redemption_keys = AsyncKeyedLocks()
        self.inflight: dict[tuple[int, str], Future[BatchOutcome]] = {}
        self.inflight_lock = threading.Lock()
        self.finished: OrderedDict[int, Mapping[str, Any]] = OrderedDict()
        self.finished_lock = threading.Lock()
        self._closed = False
        #: Called first by :meth:`close` (e.g. the job pool waits for its running jobs).
        self.closing: list[Callable[[], None]] = []
        self.indexer: Indexer | None = None
        self._indexer_thread: threading.Thread | None = None
        self._indexer_rpc: RpcClient | None = None
        #: Every signed transaction, stored before it is sent (ledger.outbox); the records a
        #: transaction carries are marked sent in the same database transaction.
        self.outbox = open_outbox(store.db, on_signed=_desk().mark_sent)
        self.reconciler: Reconciler | None = None
        self.reconciler_loop: ReconcilerLoop | None = None
        self._cache_rpc = RpcClient(rpc_url, max_connections=64)
        #: Scheme terms, allowances and pass snapshots for scans (see ledger.state_cache).
        self.state = LedgerStateCache(
            client, self._cache_rpc, poll_interval_s=settings.state_cache_poll_ms / 1000
        )

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    def start(cls, settings: Settings, *, report: Reporter | None = None) -> Runtime:
        """Start (or attach to) the chain, deploy or check, seed, start the relayers."""
        say = report or (lambda message: log.info("%s", message))
        keys = load_service_keys(settings)
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        try:
            store = ApiStore.open(settings.sqlalchemy_url)
        except StoreError as exc:
            raise StartupError(f"{exc} (set STADJERSPAS_DATABASE_URL)") from None
        store.registry.code_key = activation_code_key(settings)
        say(f"store at {store.url} migrated")
        node: AnvilNode | None = None
        try:
            keystore = open_partner_keystore(settings, store)
            _load_partner_keys(keys, keystore, store, settings)
            if settings.rpc_url is None:
                if not settings.is_development:
                    raise StartupError("STADJERSPAS_RPC_URL is required in production")
                node = AnvilNode(
                    AnvilConfig(
                        state_dir=settings.anvil_dir,
                        port=settings.anvil_port,
                        chain_id=settings.anvil_chain_id,
                        state_interval_s=settings.anvil_state_interval_s,
                        block_time=settings.anvil_block_time_s,
                        project_root=settings.project_root,
                    )
                )
                node.start()
                rpc_url = node.rpc_url
                say(f"anvil started on {rpc_url} (state in {settings.anvil_dir})")
            else:
                rpc_url = settings.rpc_url
            w3 = Web3(HTTPProvider(rpc_url, cache_allowed_requests=True))
            artifacts = compile_contracts(
                project_root=settings.project_root, cache_dir=settings.artifacts_dir
            )
            artifact = artifacts.get("StadjerspasLedger")
            deployment = load_deployment(settings.deployment_file)
            deployed_now = False
            if deployment is None:
                if not settings.deploys_automatically:
                    raise StartupError(
                        f"no deployment record at {settings.deployment_file}; run "
                        "`stadjerspas deploy` first (or set STADJERSPAS_AUTO_DEPLOY=true)"
                    )
                deployment = deploy_ledger(
                    w3,
                    artifacts=artifacts,
                    admin=keys.admin,
                    grants=_grants(keys),
                    reversal_window_s=settings.reversal_window_s,
                )
                save_deployment(deployment, settings.deployment_file)
                deployed_now = True
                say(f"deployed the ledger at {deployment.ledger_address}")
            else:
                try:
                    check_deployment(w3, deployment, artifact=artifact)
                except LedgerError as exc:
                    raise StartupError(
                        f"{exc} (deployment record {settings.deployment_file}; to start over in "
                        f"development, delete {settings.var_dir})"
                    ) from None
                say(f"using the ledger at {deployment.ledger_address}")
            client = LedgerClient(w3, address=deployment.ledger_address, abi=artifact.abi)
            runtime = cls(
                settings=settings,
                store=store,
                node=node,
                rpc_url=rpc_url,
                w3=w3,
                rpc=RpcClient(rpc_url),
                artifacts=artifacts,
                client=client,
                deployment=deployment,
                keys=keys,
                deployed_now=deployed_now,
                keystore=keystore,
            )
        except BaseException:
            store.close()
            if node is not None:
                node.stop()
            raise
        try:
            runtime._reconcile_at_start(say)
            runtime._register_merchants()
            runtime.state.start()
            # every transaction from here on is signed by a relayer and stored in the outbox
            # first (role grants, the demo seed, partners enrolled at start included)
            runtime._start_relayers()
            runtime._adopt_unmined()
            runtime._grant_missing_roles()
            if settings.is_development:
                _partners().enrol_demo_partners(runtime, report=say)
            if settings.seeds_demo:
                runtime.demo_seeded_now = seed_demo(runtime, report=say)
            if runtime.deployed_now or runtime.demo_seeded_now:
                runtime._wait_persisted(say)
            if settings.run_indexer:
                runtime._start_indexer()
            runtime._supervise()
        except BaseException:
            runtime.close()
            raise
        return runtime

    def _reconcile_at_start(self, say: Reporter) -> None:
        """Before any relayer signs anything new: replay what the outbox holds and the chain
        lacks (a restart of the service, of the node, or both), and record what was mined."""
        code = self.rpc.call("eth_getCode", self.deployment.ledger_address, "latest")
        self.reconciler = Reconciler(
            self.rpc,
            self.outbox,
            chain_id=self.deployment.chain_id,
            contract=self.deployment.ledger_address,
            code_hash=keccak(bytes.fromhex(str(code)[2:])),
            final_after_s=self.settings.finality_s,
            on_mined=lambda found: _desk().record_reconciled(self, found),
            on_failed=lambda rows: _desk().record_lost(self, rows),
        )
        try:
            report = self.reconciler.reconcile(deep=True, wait_s=30.0)
        except ReconcileRefused as exc:
            raise StartupError(str(exc)) from None
        if not report.quiet:
            say(
                f"outbox reconciled: {report.replayed} replayed, {report.mined} mined, "
                f"{report.failed} failed, {report.waiting} still waiting"
            )

    def _supervise(self) -> None:
        """The periodic reconciler, and (embedded node) the node's supervisor, which restarts
        a node that died and wakes the reconciler."""
        assert self.reconciler is not None
        self.reconciler_loop = (
            _desk()
            .ReconcilerLoop(self.reconciler, interval_s=self.settings.reconcile_interval_s)
            .start()
        )
        if self.node is not None:
            self.node.on_restart(self._node_restarted)
            self.node.supervise()

    def _node_restarted(self) -> None:
        """The node may have come back from older state: hold every relayer (no new
        transaction) until the reconciler has replayed what it lost, in the order first signed,
        so nothing new (a pass's newer token, a later spend of its balance) is mined before an
        older transaction it replays. The hold ends after the deep pass, or at the latest after
        :data:`RESTART_HOLD_S`."""
        log.warning("the embedded node restarted; reconciling the outbox with it")
        self.state.clear()
        relayers = self.relayers()
        if self.reconciler_loop is None:
            return
        for relayer in relayers:
            relayer.hold(RESTART_HOLD_S)

        def release() -> None:
            for relayer in relayers:
                relayer.release()

        self.reconciler_loop.wake(deep=True, then=release)

    def _register_merchants(self) -> None:
        """Bring your own key (``STADJERSPAS_MERCHANT_KEYSTORES``): merchant id ``i`` is the
        i-th listed keystore; make the registry agree (a new key for an existing merchant
        updates its address; a missing merchant is registered as a placeholder to complete)."""
        registry = self.store.registry
        known = {m.id: m for m in registry.merchants()}
        for merchant_id in range(1, len(self.settings.merchant_keystores) + 1):
            account = self.keys.partners[merchant_id]
            current = known.get(merchant_id)
            if current is None:
                registry.register_merchant(
                    name=f"Merchant {merchant_id}",
                    kvk_number="00000000",
                    address=account.address,
                    category="other",
                    merchant_id=merchant_id,
                )
            elif current.address != account.address:
                registry.set_merchant_address(merchant_id, account.address)

    def _start_relayers(self) -> None:
        chain_id = self.client.chain_id
        linger = self.settings.relayer_linger_ms
        observe = self.state.observe_receipt
        self.issuer_relayer, self.admin_relayer = (
            Relayer(
                self.rpc,
                account=account,
                chain_id=chain_id,
                linger_ms=linger,
                on_receipt=observe,
                journal=self.outbox,
            ).start()
            for account in (self.keys.issuer, self.keys.admin)
        )
        with self._merchants_lock:
            for merchant_id, account in sorted(self.keys.partners.items()):
                self._start_merchant_relayer(merchant_id, account)
            self._relayers_started = True

    def start_merchant(self, merchant_id: int, account: LocalAccount) -> None:
        """Make merchant ``merchant_id`` sign with ``account`` from now on: at start (before
        the relayers run) it is only recorded; while the service runs, its relayer and batcher
        start at once (a partner enrolled now redeems right away, no restart)."""
        with self._merchants_lock:
            self.keys.partners[merchant_id] = account
            if not self._relayers_started or merchant_id in self.merchant_relayers:
                return
            relayer = self._start_merchant_relayer(merchant_id, account)
        latest = int(str(self.rpc.call("eth_getTransactionCount", relayer.address, "latest")), 16)
        relayer.adopt(self.outbox.unmined_of(relayer.address, latest))

    def _start_merchant_relayer(self, merchant_id: int, account: LocalAccount) -> Relayer:
        relayer = Relayer(
            self.rpc,
            account=account,
            chain_id=self.client.chain_id,
            linger_ms=self.settings.relayer_linger_ms,
            on_receipt=self.state.observe_receipt,
            journal=self.outbox,
        ).start()
        self.merchant_relayers[merchant_id] = relayer
        self.merchant_batchers[merchant_id] = RedemptionBatcher(
            client=self.client,
            relayer=relayer,
            max_items=self.settings.batch_max_items,
            linger_s=self.settings.batch_linger_ms / 1000,
            max_in_flight=self.settings.batch_max_in_flight,
            on_outcomes=self._batch_mined,
        )
        return relayer

    def relayers(self) -> list[Relayer]:
        """The issuer's and the admin's relayers and every merchant's (a copy: merchants are
        added at run time)."""
        with self._merchants_lock:
            merchants = list(self.merchant_relayers.values())
        return [r for r in (self.issuer_relayer, self.admin_relayer, *merchants) if r is not None]

    def _wait_persisted(self, say: Reporter) -> None:
        """A first start: wait (a second or two) until the embedded node's state file holds
        the deployment and the seed, which the outbox cannot replay if they are lost (the
        deployment is not in it)."""
        interval = self.settings.anvil_state_interval_s
        if self.node is None or interval > _PERSIST_WAIT_MAX_INTERVAL_S:
            return  # a node told to write rarely is not waited for
        nonces: dict[str, int] = {
            str(account.address): int(
                str(self.rpc.call("eth_getTransactionCount", account.address, "latest")), 16
            )
            for account in (self.keys.admin, self.keys.issuer)
        }
        if not self.node.wait_persisted(nonces, timeout_s=3.0 * interval + 2.0):
            say("the node has not written its state file yet; a kill now loses the deployment")

    def _grant_missing_roles(self) -> None:
        """The service's accounts hold their roles (a merchant keystore added since the
        deployment, or a grant a restored node lost): each missing grant is sent by the admin
        relayer, after the reconciler replayed what the outbox holds, so no grant takes a
        nonce an earlier admin transaction still needs."""
        for grant in _grants(self.keys):
            if not self.client.has_role(grant.role, grant.account):
                self.transact(self.admin(), "grantRole", ROLES[grant.role], grant.account)

    def transact(self, relayer: Relayer, function: str, *args: Any) -> TxReceipt:
        """One contract call sent by ``relayer`` (so stored in the outbox before it is sent):
        preflight first (a refusal raises the contract's typed error and sends nothing), then
        wait for the receipt; a revert on chain raises the same typed error."""
        data = self.client.call_data(function, *args)
        estimate = self.client.preflight(sender=relayer.address, data=data)
        return self.send(
            relayer, TxRequest(to=self.client.address, data=data, gas=gas_limit(estimate))
        )

    def send(self, relayer: Relayer, request: TxRequest) -> TxReceipt:
        """Submit ``request`` through ``relayer`` and wait for its receipt (:meth:`receipt_of`)."""
        return self.receipt_of(relayer, request, relayer.submit(request))

    def receipt_of(self, relayer: Relayer, request: TxRequest, handle: TxHandle) -> TxReceipt:
        """The receipt of a submitted ``request``, waited for at most ``receipt_timeout_s``; a
        revert on chain raises the contract's typed error (decoded from the revert data)."""
        receipt = handle.result(timeout=self.settings.receipt_timeout_s)
        if not receipt.ok:
            raise self.client.revert_of(bytes(relayer.revert_data(request, receipt) or b""))
        return receipt

    def _adopt_unmined(self) -> None:
        """Each relayer takes over its account's outbox rows the chain has not mined (a replay
        the node holds but did not mine yet): it never signs another transaction for their
        nonces, and re-prices them if the node sits on them."""
        for relayer in self.relayers():
            latest = int(
                str(self.rpc.call("eth_getTransactionCount", relayer.address, "latest")), 16
            )
            relayer.adopt(self.outbox.unmined_of(relayer.address, latest))

    def _batch_mined(self, outcomes: Sequence[BatchOutcome]) -> None:
        """A merchant's batch is mined: the redemption desk records its outcomes in one
        transaction and leaves them in ``finished`` for the waiting requests."""
        _desk().record_batch(self, outcomes)

    def finish(self, saved: Mapping[int, Mapping[str, Any]]) -> None:
        """Leave what was saved into each redemption's record (by redemption id) for the
        requests waiting on them (bounded: a request that timed out never collects it, and
        finds the record in the store on retry)."""
        with self.finished_lock:
            self.finished.update(saved)
            while len(self.finished) > _FINISHED_KEPT:
                self.finished.popitem(last=False)

    def collect(self, redemption_id: int) -> Mapping[str, Any] | None:
        with self.finished_lock:
            return self.finished.pop(redemption_id, None)

    def _start_indexer(self) -> None:
        """Follow the chain into the index tables in a background thread (stopped by close)."""
        self._indexer_rpc = RpcClient(self.rpc_url)
        self.indexer = Indexer(
            self.store.db,
            self._indexer_rpc,
            self.client.abi,
            IndexerConfig(
                contract=self.deployment.ledger_address,
                start_block=self.deployment.deployed_block,
                confirmations=self.settings.index_confirmations,
                poll_interval_s=0.5,
                # a node that restarted is back within seconds: look again soon, and rewind
                retry=RetryPolicy(max_s=2.0),
            ),
        )
        self._indexer_thread = threading.Thread(
            target=self._follow_index, name="indexer", daemon=True
        )
        self._indexer_thread.start()

    def _follow_index(self) -> None:
        assert self.indexer is not None
        try:
            self.indexer.follow()
        except Exception:  # the API keeps serving; /health shows the index falling behind
            log.exception("the indexer stopped")

    def index_lag(self) -> int | None:
        """Blocks the index is behind the head, or None when it cannot be told."""
        state = self.index_state()
        return None if state is None else state.lag

    def index_state(self) -> IndexStatus | None:
        """How far the index is behind the head (and whether it diverged), None if unknown."""
        try:
            return index_state(
                self.store.db,
                self.w3,
                contract=self.deployment.ledger_address,
                start_block=self.deployment.deployed_block,
            )
        except Exception:
            return None

    def close(self) -> None:
        """Stop the indexer, drain the relayers, close the store, stop anvil. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for hook in self.closing:
            try:
                hook()
            except Exception:
                log.exception("a closing hook failed")
        if self.reconciler_loop is not None:
            self.reconciler_loop.stop()
        if self.indexer is not None:
            self.indexer.stop.set()
            if self._indexer_thread is not None:
                self._indexer_thread.join(timeout=10.0)
        if self._indexer_rpc is not None:
            self._indexer_rpc.close()
        with self._merchants_lock:
            self._relayers_started = False  # nothing new starts while closing
            batchers = list(self.merchant_batchers.values())
        for batcher in batchers:
            with contextlib.suppress(Exception):
                batcher.close(timeout=10.0)
        for relayer in self.relayers():
            with contextlib.suppress(Exception):
                relayer.close(drain=True, timeout=10.0)
        self.state.close()
        self.outbox.close()
        with contextlib.suppress(Exception):
            self.rpc.close()
        with contextlib.suppress(Exception):
            self._cache_rpc.close()
        self.store.close()
        if self.node is not None:
            self.node.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- accessors ------------------------------------------------------------------------------

    @property
    def chain_id(self) -> int:
        return self.client.chain_id

    @property
    def domain(self) -> Domain:
        return self.client.domain

    def merchant_relayer(self, merchant_id: int) -> Relayer:
        relayer = self.merchant_relayers.get(merchant_id)
        if relayer is None:
            raise KeyError(f"no relayer for merchant {merchant_id}")
        return relayer

    def merchant_batcher(self, merchant_id: int) -> RedemptionBatcher:
        batcher = self.merchant_batchers.get(merchant_id)
        if batcher is None:
            raise KeyError(f"no redemption batcher for merchant {merchant_id}")
        return batcher

    def issuer(self) -> Relayer:
        if self.issuer_relayer is None:
            raise RuntimeError("the runtime's relayers are not started")
        return self.issuer_relayer

    def admin(self) -> Relayer:
        if self.admin_relayer is None:
            raise RuntimeError("the runtime's relayers are not started")
        return self.admin_relayer


def _load_partner_keys(
    keys: ServiceKeys, keystore: PartnerKeystore, store: ApiStore, settings: Settings
) -> None:
    """Open every partner key (one KEK derivation, then AES-GCM per key) and give each
    registered merchant whose address has a key that key; a bring-your-own key (settings)
    wins for its merchant id."""
    try:
        opened = keystore.load()
    except KeystoreError as exc:
        raise StartupError(str(exc)) from None
    byok = len(settings.merchant_keystores)
    for merchant in store.registry.merchants():
        account = opened.get(merchant.address)
        if account is not None and merchant.id is not None and merchant.id > byok:
            keys.partners[merchant.id] = account


def _partners() -> ModuleType:
    """:mod:`api.partners` (imported when first used: it imports the services)."""
    from api import partners

    return partners


def _desk() -> ModuleType:
    """:mod:`api.redemptions`, the redemption desk (imported when first used: it imports the
    services, which import this module)."""
    from api import redemptions

    return redemptions


def _grants(keys: ServiceKeys) -> list[RoleGrant]:
    grants = [
        RoleGrant("issuer", keys.issuer.address),
        RoleGrant("pass_signer", keys.pass_signer.address),
        RoleGrant("pauser", keys.admin.address),
    ]
    grants += [RoleGrant("merchant", account.address) for account in keys.merchants]
    return grants
