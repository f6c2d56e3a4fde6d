"""ledger.compiler: solc-js through tools/solc-shim via py-solc-x, cached artifacts."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, NoReturn

import pytest
import solcx
from eth_account.signers.local import LocalAccount
from web3 import Web3

from ledger.compiler import (
    Artifacts,
    CompilerSettings,
    ContractNotFoundError,
    compile_contracts,
)
from ledger.errors import CompileError, LedgerError

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def counter_artifacts(project_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    return compile_contracts(
        project_root=project_root,
        cache_dir=tmp_path_factory.mktemp("build"),
        sources_dir=FIXTURES / "ok",
    )


def test_shim_version_matches_solc_js(project_root: Path) -> None:
    out = subprocess.run(
        [str(project_root / "tools" / "solc-shim"), "--version"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert out.startswith(
        "solc, the solidity compiler commandline interface\nVersion: 0.8.30+commit."
    )
    assert out.rstrip().endswith(".Linux.g++")


def test_shim_rejects_unknown_option(project_root: Path) -> None:
    proc = subprocess.run(
        [str(project_root / "tools" / "solc-shim"), "--bogus"], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert "unrecognised option '--bogus'" in proc.stderr


def test_compiles_fixture_with_all_outputs(counter_artifacts: Artifacts) -> None:
    counter = counter_artifacts.get("Counter")
    assert counter.name == "Counter"
    assert counter.source_path == "tests/ledger/fixtures/ok/Counter.sol"
    assert {e.get("name") for e in counter.abi} >= {"increment", "count", "owner", "Incremented"}
    assert counter.bytecode.startswith("0x6080")
    assert counter.deployed_bytecode.startswith("0x6080")
    assert len(counter.deployed_bytecode) < len(counter.bytecode)
    assert [s["label"] for s in counter.storage_layout["storage"]] == ["_owner", "count"]
    assert "increment()" in counter.userdoc["methods"]
    assert counter.devdoc["title"].startswith("A tiny fixture")
    metadata = json.loads(counter.metadata)
    assert metadata["compiler"]["version"].startswith("0.8.30+commit.")
    assert metadata["settings"]["evmVersion"] == "prague"
    assert metadata["settings"]["optimizer"] == {"enabled": True, "runs": 10_000}
    assert counter.source_hash == counter_artifacts.source_hash
    # imported OpenZeppelin contracts are reachable by qualified name only
    assert counter_artifacts.names() == ["Counter"]
    assert "node_modules/@openzeppelin/contracts/access/Ownable.sol:Ownable" in counter_artifacts


def test_build_info_for_slither(counter_artifacts: Artifacts) -> None:
    info = json.loads(counter_artifacts.build_info_path.read_text())
    assert info["_format"] == "hh-sol-build-info-1"
    assert info["solcVersion"] == "0.8.30"
    assert info["solcLongVersion"].startswith("0.8.30+commit.")
    assert "tests/ledger/fixtures/ok/Counter.sol" in info["input"]["sources"]
    assert info["input"]["settings"]["evmVersion"] == "prague"
    assert info["input"]["settings"]["remappings"] == ["@openzeppelin/=node_modules/@openzeppelin/"]
    # ASTs of every source, imports included, as slither needs them
    assert (
        "ast"
        in info["output"]["sources"]["node_modules/@openzeppelin/contracts/access/Ownable.sol"]
    )


def test_unknown_contract_is_a_typed_error(counter_artifacts: Artifacts) -> None:
    with pytest.raises(ContractNotFoundError, match=r"'Nope'.*Counter"):
        counter_artifacts.get("Nope")
    with pytest.raises(LedgerError):
        counter_artifacts.get("Nope")


def test_second_call_uses_cache_without_compiler(
    project_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "ok", src)
    cache = tmp_path / "build"
    first = compile_contracts(project_root=project_root, cache_dir=cache, sources_dir=src)
    assert not first.from_cache

    calls: list[Any] = []

    def no_compiler(*args: Any, **kwargs: Any) -> NoReturn:
        calls.append((args, kwargs))
        raise AssertionError("the compiler must not run for unchanged sources")

    monkeypatch.setattr(solcx, "compile_standard", no_compiler)  # what ledger.compiler calls
    second = compile_contracts(project_root=project_root, cache_dir=cache, sources_dir=src)
    assert second.from_cache
    assert calls == []
    assert second.source_hash == first.source_hash
    assert second.get("Counter") == first.get("Counter")

    # a changed source changes the key, so the compiler is needed again
    counter = src / "Counter.sol"
    counter.write_text(counter.read_text() + "\n// changed\n")
    with pytest.raises(AssertionError, match="must not run"):
        compile_contracts(project_root=project_root, cache_dir=cache, sources_dir=src)
    assert len(calls) == 1
    # and so does a changed setting
    with pytest.raises(AssertionError, match="must not run"):
        compile_contracts(
            project_root=project_root,
            cache_dir=cache,
            sources_dir=FIXTURES / "ok",
            settings=CompilerSettings(optimizer_runs=200),
        )


def test_syntax_error_raises_compile_error(project_root: Path, tmp_path: Path) -> None:
    with pytest.raises(CompileError) as info:
        compile_contracts(
            project_root=project_root, cache_dir=tmp_path, sources_dir=FIXTURES / "broken"
        )
    assert len(info.value.messages) == 1
    message = info.value.messages[0]
    assert message.startswith("ParserError: Expected ';' but got '}'")
    assert "tests/ledger/fixtures/broken/Broken.sol:7:1" in message
    assert message in str(info.value)
    assert not list(tmp_path.rglob("artifacts.json"))


def test_missing_sources_and_shim_are_compile_errors(project_root: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompileError, match=r"no Solidity sources"):
        compile_contracts(
            project_root=project_root, cache_dir=tmp_path, sources_dir=tmp_path / "empty"
        )
    with pytest.raises(CompileError, match="solc shim not found"):
        compile_contracts(
            project_root=project_root,
            cache_dir=tmp_path,
            sources_dir=FIXTURES / "ok",
            solc_binary=tmp_path / "missing-solc",
        )


def test_compiled_fixture_deploys_and_runs(
    counter_artifacts: Artifacts,
    w3: Web3,
    dev_accounts: list[LocalAccount],
    chain_snapshot: str,
) -> None:
    counter = counter_artifacts.get("Counter")
    owner = dev_accounts[0]
    factory = w3.eth.contract(abi=counter.abi, bytecode=counter.bytecode)
    tx = factory.constructor(owner.address).build_transaction(
        {"from": owner.address, "nonce": w3.eth.get_transaction_count(owner.address), "gasPrice": 0}
    )
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(owner.sign_transaction(tx).raw_transaction)
    )
    assert receipt["status"] == 1
    deployed = w3.eth.contract(address=receipt["contractAddress"], abi=counter.abi)
    assert w3.eth.get_code(deployed.address).to_0x_hex() == counter.deployed_bytecode
    assert deployed.functions.owner().call() == owner.address
    assert deployed.functions.count().call() == 0


def test_project_contracts_compile(project_root: Path, tmp_path: Path) -> None:
    if not list((project_root / "contracts").rglob("*.sol")):
        pytest.skip("no contracts/ yet")
    artifacts = compile_contracts(project_root=project_root, cache_dir=tmp_path)
    ledger_contract = artifacts.get("StadjerspasLedger")
    assert ledger_contract.bytecode.startswith("0x")
    assert len(ledger_contract.deployed_bytecode) // 2 - 1 <= 24_576, "EIP-170 code-size limit"
