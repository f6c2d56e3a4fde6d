"""``GET /health``: is the chain reachable, and which ledger does this service use."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import RuntimeDep, SettingsDep
from api.schemas import HealthOut

router = APIRouter(tags=["health"])


@router.get("/health", summary="Chain id, head block and the ledger contract")
def health(runtime: RuntimeDep, settings: SettingsDep) -> HealthOut:
    """``status`` is ``degraded`` (still HTTP 200) when the node does not answer.

    ``index_lag_blocks`` is how far the off-chain index is behind the head (None if unknown);
    an index that still mirrors blocks the node no longer has (it is about to rewind) makes the
    service ``degraded`` until it has.
    """
    detail: str | None = None
    try:
        head: int | None = int(runtime.w3.eth.block_number)
    except Exception as exc:
        head = None
        detail = f"the node at {runtime.rpc_url} does not answer ({type(exc).__name__})"
    if runtime.reconciler is not None and runtime.reconciler.refused is not None:
        detail = runtime.reconciler.refused
    try:
        outbox: dict[str, int] | None = runtime.outbox.counts()
    except Exception:
        outbox = None
        detail = detail or "the database does not answer"
    index = runtime.index_state()
    if index is not None and index.diverged and detail is None:
        detail = (
            f"the index mirrors block {index.checkpoint}, which the node no longer has "
            "(it restarted from older state); the indexer is rewinding"
        )
    return HealthOut(
        status="ok" if detail is None else "degraded",
        detail=detail,
        outbox=outbox,
        chain_id=runtime.deployment.chain_id,
        head_block=head,
        ledger_address=runtime.deployment.ledger_address,
        deployment_block=runtime.deployment.deployed_block,
        rpc="embedded-anvil" if runtime.node is not None else "external",
        env=settings.env,
        index_lag_blocks=None if index is None else index.lag,
    )
