"""Compile the Solidity sources in ``contracts/`` into cached artifacts.

The compiler is solc-js (npm ``solc``, pinned in ``package.json``) behind ``tools/solc-shim``,
which speaks the native ``solc`` command line that py-solc-x drives (``--version`` and
``--standard-json``). Nothing is downloaded: py-solc-x's ``install_solc`` is never called.

Settings (pinned, part of the cache key):

- compiler 0.8.30, ``evmVersion: "prague"`` (newer compilers default to osaka, which neither anvil's
  default nor Besu may run);
- optimizer on with ``runs = 10_000``: the ledger contract is deployed once and then called for
  every issuance and redemption for years, so per-call gas matters far more than deployment size
  (the gas bars in DESIGN.md are per call). Lower it through :class:`CompilerSettings` if a
  contract ever nears the 24 KiB code-size limit;
- ``viaIR`` on: the IR pipeline saves about 2,000 gas per redemption (measured by ``bench.gas``,
  see docs/gas.md) at the price of a slower compile (seconds under solc-js, cached).

Artifacts are cached under ``cache_dir/<key>/`` where ``key`` is a SHA-256 over the compiler
version, the settings, the versions of the npm packages that provide imports, and every source
file's path and content. A second call with unchanged sources reads the cache and does not start
the compiler. Each build also writes ``build-info.json`` (Hardhat's build-info format: the full
standard-JSON input and output) for tools such as slither.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import solcx
from solcx.exceptions import SolcError

from ledger.errors import CompileError

__all__ = [
    "COMPILER_VERSION",
    "EVM_VERSION",
    "Artifacts",
    "CompilerSettings",
    "ContractArtifact",
    "ContractNotFoundError",
    "compile_contracts",
    "default_solc_binary",
]

COMPILER_VERSION = "0.8.30"
EVM_VERSION = "prague"
OPENZEPPELIN_REMAPPING = "@openzeppelin/=node_modules/@openzeppelin/"
_CACHE_FORMAT = "stadjerspas-artifacts-1"

_OUTPUT_SELECTION: dict[str, dict[str, list[str]]] = {
    "*": {
        "*": [
            "abi",
            "evm.bytecode.object",
            "evm.bytecode.sourceMap",
            "evm.bytecode.linkReferences",
            "evm.deployedBytecode.object",
            "evm.deployedBytecode.sourceMap",
            "evm.deployedBytecode.linkReferences",
            "evm.deployedBytecode.immutableReferences",
            "evm.methodIdentifiers",
            "storageLayout",
            "devdoc",
            "userdoc",
            "metadata",
        ],
        "": ["ast"],
    }
}

# npm packages whose files the sources may import: their versions are part of the cache key.
_IMPORT_PACKAGES = ("solc", "@openzeppelin/contracts", "@openzeppelin/contracts-upgradeable")


class ContractNotFoundError(CompileError, KeyError):
    """No compiled contract has the requested name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class CompilerSettings:
    """Compiler settings that are part of every build (and of its cache key)."""

    version: str = COMPILER_VERSION
    evm_version: str = EVM_VERSION
    optimizer_runs: int = 10_000
    via_ir: bool = True
    remappings: tuple[str, ...] = (OPENZEPPELIN_REMAPPING,)

    def standard_json_settings(self) -> dict[str, Any]:
        return {
            "evmVersion": self.evm_version,
            "optimizer": {"enabled": True, "runs": self.optimizer_runs},
            "viaIR": self.via_ir,
            "remappings": list(self.remappings),
            "metadata": {"bytecodeHash": "ipfs"},
            "outputSelection": _OUTPUT_SELECTION,
        }


@dataclass(frozen=True)
class ContractArtifact:
    """One compiled contract. Bytecode is ``0x``-prefixed hex."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str
    source_hash: str
    source_path: str = ""
    storage_layout: dict[str, Any] = field(default_factory=dict)
    devdoc: dict[str, Any] = field(default_factory=dict)
    userdoc: dict[str, Any] = field(default_factory=dict)
    metadata: str = ""
    method_identifiers: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sourcePath": self.source_path,
            "sourceHash": self.source_hash,
            "abi": self.abi,
            "bytecode": self.bytecode,
            "deployedBytecode": self.deployed_bytecode,
            "storageLayout": self.storage_layout,
            "devdoc": self.devdoc,
            "userdoc": self.userdoc,
            "metadata": self.metadata,
            "methodIdentifiers": self.method_identifiers,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ContractArtifact:
        return cls(
            name=str(data["name"]),
            abi=list(data["abi"]),
            bytecode=str(data["bytecode"]),
            deployed_bytecode=str(data["deployedBytecode"]),
            source_hash=str(data["sourceHash"]),
            source_path=str(data.get("sourcePath", "")),
            storage_layout=dict(data.get("storageLayout") or {}),
            devdoc=dict(data.get("devdoc") or {}),
            userdoc=dict(data.get("userdoc") or {}),
            metadata=str(data.get("metadata", "")),
            method_identifiers=dict(data.get("methodIdentifiers") or {}),
        )


@dataclass(frozen=True)
class Artifacts:
    """The contracts of one build, by simple name and by ``"path:Name"``."""

    contracts: Mapping[str, ContractArtifact]
    source_hash: str
    build_dir: Path
    from_cache: bool = False
    warnings: tuple[str, ...] = ()

    @property
    def build_info_path(self) -> Path:
        return self.build_dir / "build-info.json"

    def get(self, name: str) -> ContractArtifact:
        """Return the contract called ``name`` (or ``"path/To.sol:Name"``)."""
        try:
            return self.contracts[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise ContractNotFoundError(
                f"no compiled contract named {name!r} (compiled: {known})"
            ) from None

    def names(self) -> list[str]:
        """Simple names of the contracts defined in the project's own sources."""
        return sorted(n for n in self.contracts if ":" not in n)

    def __contains__(self, name: object) -> bool:
        return name in self.contracts

    def __iter__(self) -> Iterator[ContractArtifact]:
        return iter(self.contracts[n] for n in self.names())


def default_solc_binary(project_root: Path) -> Path:
    """The solc-js shim shipped in the repository."""
    return project_root / "tools" / "solc-shim"


def compile_contracts(
    *,
    project_root: Path,
    cache_dir: Path,
    sources_dir: Path | None = None,
    settings: CompilerSettings | None = None,
    solc_binary: Path | None = None,
) -> Artifacts:
    """Compile every ``*.sol`` under ``sources_dir`` (default ``project_root/contracts``).

    Returns the cached artifacts without starting the compiler when sources and settings are
    unchanged. Raises :class:`CompileError` with the compiler's formatted messages on errors.
    """
    project_root = project_root.resolve()
    settings = settings or CompilerSettings()
    src_dir = (sources_dir or project_root / "contracts").resolve()
    sources = _collect_sources(project_root, src_dir)
    key = _cache_key(project_root, sources, settings)
    build_dir = cache_dir / key
    cached = _read_cache(build_dir, key)
    if cached is not None:
        return cached

    binary = (solc_binary or default_solc_binary(project_root)).resolve()
    if not binary.is_file():
        raise CompileError(f"solc shim not found at {binary}; run `make setup`")
    if shutil.which("node") is None:
        raise CompileError("`node` is not on PATH; the solc shim needs Node.js")

    input_json: dict[str, Any] = {
        "language": "Solidity",
        "sources": {name: {"content": content} for name, content in sources.items()},
        "settings": settings.standard_json_settings(),
    }
    output = _run_compiler(input_json, project_root, binary)
    errors = output.get("errors") or []
    warnings = tuple(
        str(e.get("formattedMessage") or e.get("message"))
        for e in errors
        if e.get("severity") != "error"
    )
    contracts = _extract(output, set(sources), key)
    if not any(":" not in n for n in contracts):
        raise CompileError(f"no contracts were produced from the sources under {src_dir}")
    long_version = _long_version(contracts, settings.version)
    if long_version.split("+")[0] != settings.version:
        raise CompileError(
            f"the compiler at {binary} is {long_version}, but {settings.version} is pinned"
        )
    _write_cache(build_dir, key, contracts, input_json, output, settings, long_version)
    return Artifacts(contracts=contracts, source_hash=key, build_dir=build_dir, warnings=warnings)


def _collect_sources(project_root: Path, src_dir: Path) -> dict[str, str]:
    if not src_dir.is_dir():
        raise CompileError(f"no contracts directory at {src_dir}")
    files = sorted(p for p in src_dir.rglob("*.sol") if p.is_file())
    if not files:
        raise CompileError(f"no Solidity sources (*.sol) under {src_dir}")
    sources: dict[str, str] = {}
    for path in files:
        try:
            name = path.relative_to(project_root).as_posix()
        except ValueError:
            name = path.as_posix()
        sources[name] = path.read_text(encoding="utf-8")
    return sources


def _package_version(project_root: Path, package: str) -> str:
    manifest = project_root / "node_modules" / package / "package.json"
    try:
        return str(json.loads(manifest.read_text(encoding="utf-8")).get("version", "?"))
    except (OSError, ValueError):
        return "absent"


def _cache_key(project_root: Path, sources: Mapping[str, str], settings: CompilerSettings) -> str:
    digest = hashlib.sha256()
    header = {
        "format": _CACHE_FORMAT,
        "compiler": settings.version,
        "settings": settings.standard_json_settings(),
        "packages": {p: _package_version(project_root, p) for p in _IMPORT_PACKAGES},
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for name in sorted(sources):
        encoded_name = name.encode()
        content = sources[name].encode()
        digest.update(len(encoded_name).to_bytes(8, "big") + encoded_name)
        digest.update(len(content).to_bytes(8, "big") + content)
    return digest.hexdigest()


def _run_compiler(input_json: dict[str, Any], project_root: Path, binary: Path) -> dict[str, Any]:
    try:
        output: dict[str, Any] = solcx.compile_standard(
            input_json,
            base_path=project_root,
            allow_paths=[project_root, project_root / "node_modules"],
            solc_binary=binary,
        )
    except SolcError as exc:
        messages = tuple(
            str(e.get("formattedMessage") or e.get("message"))
            for e in (exc.error_dict or [])
            if e.get("severity") == "error"
        )
        if not messages:
            detail = (exc.stderr_data or exc.message or "").strip()
            messages = (detail,) if detail else ()
        text = "\n".join(messages) or "the compiler failed without a message"
        raise CompileError(f"Solidity compilation failed:\n{text}", messages=messages) from exc
    except (OSError, ValueError) as exc:  # shim missing/not executable, or unparsable output
        raise CompileError(f"could not run the Solidity compiler {binary}: {exc}") from exc
    return output


def _long_version(contracts: Mapping[str, ContractArtifact], default: str) -> str:
    """The compiler's long version (``0.8.30+commit.73712a01``), read from contract metadata."""
    for artifact in contracts.values():
        try:
            version = json.loads(artifact.metadata)["compiler"]["version"]
        except (ValueError, KeyError, TypeError):
            continue
        return str(version)
    return default


def _hex(value: object) -> str:
    text = str(value or "")
    return text if text.startswith("0x") else f"0x{text}"


def _extract(
    output: Mapping[str, Any], own_sources: set[str], key: str
) -> dict[str, ContractArtifact]:
    contracts: dict[str, ContractArtifact] = {}
    simple_origin: dict[str, str] = {}
    for source_path, by_name in (output.get("contracts") or {}).items():
        for name, data in by_name.items():
            evm = data.get("evm") or {}
            artifact = ContractArtifact(
                name=name,
                abi=list(data.get("abi") or []),
                bytecode=_hex((evm.get("bytecode") or {}).get("object")),
                deployed_bytecode=_hex((evm.get("deployedBytecode") or {}).get("object")),
                source_hash=key,
                source_path=source_path,
                storage_layout=dict(data.get("storageLayout") or {}),
                devdoc=dict(data.get("devdoc") or {}),
                userdoc=dict(data.get("userdoc") or {}),
                metadata=str(data.get("metadata") or ""),
                method_identifiers=dict(evm.get("methodIdentifiers") or {}),
            )
            contracts[f"{source_path}:{name}"] = artifact
            if source_path in own_sources:
                if name in simple_origin:
                    raise CompileError(
                        f"contract name {name!r} is defined in both {simple_origin[name]} and "
                        f"{source_path}; rename one"
                    )
                simple_origin[name] = source_path
                contracts[name] = artifact
    return contracts


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_cache(
    build_dir: Path,
    key: str,
    contracts: Mapping[str, ContractArtifact],
    input_json: Mapping[str, Any],
    output: Mapping[str, Any],
    settings: CompilerSettings,
    long_version: str,
) -> None:
    build_info = {
        "_format": "hh-sol-build-info-1",
        "id": key,
        "solcVersion": settings.version,
        "solcLongVersion": long_version,
        "input": input_json,
        "output": output,
    }
    _atomic_write(build_dir / "build-info.json", json.dumps(build_info))
    _atomic_write(build_dir / "input.json", json.dumps(input_json, indent=1))
    # artifacts.json last: its presence marks a complete build.
    payload = {
        "format": _CACHE_FORMAT,
        "sourceHash": key,
        "contracts": {name: art.to_json() for name, art in contracts.items()},
    }
    _atomic_write(build_dir / "artifacts.json", json.dumps(payload))


def _read_cache(build_dir: Path, key: str) -> Artifacts | None:
    path = build_dir / "artifacts.json"
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if payload.get("format") != _CACHE_FORMAT or payload.get("sourceHash") != key:
        return None
    contracts = {
        name: ContractArtifact.from_json(data) for name, data in payload["contracts"].items()
    }
    return Artifacts(contracts=contracts, source_hash=key, build_dir=build_dir, from_cache=True)
