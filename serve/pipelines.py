"""Where the stages of a screening run, one class per topology behind the same routes.

- `SinglePipeline` (topology single): this replica's scan workers decode and regress the scans
  that queue together; the rules and the lookup run inline. No hop.
- `IngressPipeline` (topology ingress): a pool of threads sized to the replica's CPUs decodes;
  the Regressor deployment regresses (on a GPU where there is one). One hop.
- `ChainPipeline` (topology chain): every stage a deployment of its own, chained, so the ingress
  awaits once at the chain's end. Three hops.

Each answers `screen`, `plot`, `case_image` and `stage_versions`, and says how many requests
the ingress replica should work on at once (`slots`, for serve/admission.py: more only queue
inside the pipeline, where no budget bounds their wait). A scan that cannot be screened raises
its ScanError and a full stage queue raises Serve's BackPressureError; the API turns them into
422 and 503.
"""

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray.serve.handle import DeploymentHandle

from clare_dist.bundle import load_bundle
from clare_dist.result import Screening
from clare_dist.scan_workers import ScanWorkers
from clare_dist.scans import ScanConfig, ScanError
from serve.cpus import node_cpus, replica_cpus
from serve.stages import CaseLookup, DecodedScan, Preprocessor, Regressed, RegressorSettings

log = logging.getLogger("ray.serve")

READY_TIMEOUT_S = 5.0
# Requests an ingress replica of the chain works on at once: it cannot see how many replicas the
# stages behind it have; two per core of the 2-core machine the chain was measured on.
CHAIN_SLOTS = 4
Outcome = tuple[Screening, dict[str, float]]


def raise_failed(outcome: Any) -> Any:
    """The outcome of a stage, or the ScanError of the failed Screening it passed on."""
    if isinstance(outcome, Screening) and not outcome.ok:
        raise ScanError(outcome.error_kind, outcome.error_reason)
    return outcome


class _LocalStages:
    """The decoding and lookup stages run in this replica, in worker threads beside its event loop."""

    def __init__(self, bundle: str, limits: ScanConfig, images_root: str | None, threads: int) -> None:
        self.decoder = Preprocessor.func_or_class(bundle, limits)
        self.cases = CaseLookup.func_or_class(bundle, images_root)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="clare-cpu-stage")

    async def run(self, work: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, work, *args)

    async def decode(self, body: bytes, rid: str, thumbnail: bool = False) -> DecodedScan:
        return raise_failed(await self.run(self.decoder, body, rid, thumbnail))

    async def plot(self, regressed: Regressed, rid: str, k: int, decoded: DecodedScan) -> bytes:
        return await self.run(self.cases.plot, regressed, rid, k, decoded.thumbnail)

    def versions(self) -> dict[str, str | None]:
        return {"Preprocessor": self.decoder.ready(), "CaseLookup": self.cases.ready()}


class SinglePipeline:
    def __init__(self, bundle: str, settings: RegressorSettings, limits: ScanConfig, images_root: str | None,
                 decode_threads: int | None) -> None:
        loaded, cores = load_bundle(bundle), node_cpus()
        self.model_version = loaded.model_version
        self.workers = ScanWorkers(loaded.onnx_path, loaded.scan_config(limits), decode_threads or cores,
                                   max_batch=settings.max_batch_size, wide_threads=settings.threads or cores,
                                   spinning=settings.spinning)
        self.local = _LocalStages(bundle, limits, images_root, decode_threads or replica_cpus())
        self.slots = len(self.workers.threads)  # one scan per worker: a scan admitted is a scan being worked on

    async def screen(self, body: bytes, rid: str, k: int) -> Outcome:
        done = await asyncio.wrap_future(self.workers.submit(body))
        return self.local.cases.screen(Regressed(done.coords, done.ood_score, done.seconds), rid, k)

    async def plot(self, body: bytes, rid: str, k: int) -> tuple[bytes, dict[str, float]]:
        decoded = await self.local.decode(body, rid, thumbnail=True)
        done = await asyncio.wrap_future(self.workers.submit(decoded.scan))
        regressed = Regressed(done.coords, done.ood_score, decoded.seconds | {"queue": done.seconds["queue"], "regress": done.seconds["regress"]})
        return await self.local.plot(regressed, rid, k, decoded), regressed.seconds

    async def case_image(self, case_id: str) -> tuple[bytes | None, str]:
        return await self.local.run(self.local.cases.case_image, case_id)

    async def stage_versions(self) -> dict[str, str | None]:
        alive = all(thread.is_alive() for thread in self.workers.threads)
        return self.local.versions() | {"Regressor": self.model_version if alive else None}


class IngressPipeline:
    def __init__(self, bundle: str, regressor: DeploymentHandle, limits: ScanConfig, images_root: str | None,
                 decode_threads: int | None) -> None:
        self.regressor = regressor
        threads = decode_threads or replica_cpus()
        self.local = _LocalStages(bundle, limits, images_root, threads)
        self.slots = 2 * threads  # one scan decoding and one at the regressor per decoding thread

    async def screen(self, body: bytes, rid: str, k: int) -> Outcome:
        decoded = await self.local.decode(body, rid)
        return self.local.cases.screen(await self.regressor.remote(decoded), rid, k)

    async def plot(self, body: bytes, rid: str, k: int) -> tuple[bytes, dict[str, float]]:
        decoded = await self.local.decode(body, rid, thumbnail=True)
        regressed = await self.regressor.remote(decoded)
        return await self.local.plot(regressed, rid, k, decoded), regressed.seconds

    async def case_image(self, case_id: str) -> tuple[bytes | None, str]:
        return await self.local.run(self.local.cases.case_image, case_id)

    async def stage_versions(self) -> dict[str, str | None]:
        return self.local.versions() | {"Regressor": await _stage_version(self.regressor)}


class ChainPipeline:
    def __init__(self, preprocessor: DeploymentHandle, regressor: DeploymentHandle, lookup: DeploymentHandle) -> None:
        self.preprocessor, self.regressor, self.lookup = preprocessor, regressor, lookup
        self.slots = CHAIN_SLOTS

    async def screen(self, body: bytes, rid: str, k: int) -> Outcome:
        # each stage gets the previous one's result straight from it (a bad scan travels the chain
        # as a failed Screening); the ingress waits once, for the end of the chain
        regressed = self.regressor.remote(self.preprocessor.remote(body, rid))
        screening, seconds = await self.lookup.screen.remote(regressed, rid, k)
        raise_failed(screening)
        return screening, seconds

    async def plot(self, body: bytes, rid: str, k: int) -> tuple[bytes, dict[str, float]]:
        decoded = raise_failed(await self.preprocessor.remote(body, rid, True))
        regressed = await self.regressor.remote(decoded)
        return await self.lookup.plot.remote(regressed, rid, k, decoded.thumbnail), regressed.seconds

    async def case_image(self, case_id: str) -> tuple[bytes | None, str]:
        return await self.lookup.case_image.remote(case_id)

    async def stage_versions(self) -> dict[str, str | None]:
        stages = {"Preprocessor": self.preprocessor, "Regressor": self.regressor, "CaseLookup": self.lookup}
        versions = await asyncio.gather(*(_stage_version(handle) for handle in stages.values()))
        return dict(zip(stages, versions))


def pipeline_for(regressor: DeploymentHandle | RegressorSettings, bundle: str, preprocessor: DeploymentHandle | None,
                 lookup: DeploymentHandle | None, images_root: str | None, decode_threads: int | None,
                 limits: ScanConfig) -> SinglePipeline | IngressPipeline | ChainPipeline:
    """The topology the application was built with (serve/app.py): regressor settings instead of a
    Regressor deployment make it single; a Preprocessor deployment makes it chain."""
    if isinstance(regressor, RegressorSettings):
        return SinglePipeline(bundle, regressor, limits, images_root, decode_threads)
    if preprocessor is None:
        return IngressPipeline(bundle, regressor, limits, images_root, decode_threads)
    return ChainPipeline(preprocessor, regressor, lookup)


async def _stage_version(handle: DeploymentHandle) -> str | None:
    try:
        return await asyncio.wait_for(handle.ready.remote(), READY_TIMEOUT_S)
    except Exception as err:  # a stage that is down or still starting is reported as not ready
        log.warning("readiness: %s did not answer: %s", handle.deployment_name, type(err).__name__)
        return None
