"""``GET /health``: is the chain reachable, and which ledger does this service use."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import RuntimeDep, SettingsDep
from api.schemas import HealthOut

router = APIRouter(tags=["health"])


@router.get("/health", summary="Chain id, head block and the ledger contract")
def health(runtime: RuntimeDep, settings: SettingsDep) -> HealthOut:
    """``status`` is ``degraded`` (still HTTP 200) when the node does not answer.

    ``index_lag_blocks`` is how far the off-chain index is behind the head (None if unknown).
    """
    try:
        head: int | None = int(runtime.w3.eth.block_number)
    except Exception:
        head = None
    return HealthOut(
        status="ok" if head is not None else "degraded",
        chain_id=runtime.deployment.chain_id,
        head_block=head,
        ledger_address=runtime.deployment.ledger_address,
        deployment_block=runtime.deployment.deployed_block,
        rpc="embedded-anvil" if runtime.node is not None else "external",
        env=settings.env,
        index_lag_blocks=runtime.index_lag(),
    )
