"""ModelManager: which versions of which models are loaded, as TF Serving's ServerCore does.

Each model has a base path whose integer-named subdirectories are versions. The manager polls
the file system (TF Serving's --file_system_poll_wait_seconds), applies the model's version
policy (latest N by default, all, or specific versions), and keeps versions available the way
TF Serving's availability-preserving policy does:

1. A new aspired version is loaded and warmed up from its
   assets.extra/tf_serving_warmup_requests while the old version keeps serving.
2. It is published: from then on requests for the latest version get it. Publishing swaps
   one dict, so a request holds either the old version or the new one, never neither.
3. Versions no longer aspired are unpublished, and unloaded once every request that
   acquired them has released them. Nothing in flight is dropped.

A version that fails to load or warm up ends in state END with its error; older versions
stay in service, and it is retried only when its saved_model.pb changes.
"""

import dataclasses
import logging
import os
import threading
import time

import grpc
import tensorflow as tf

from tfbert.serving.servable import Servable, is_saved_model_dir
from tfbert.serving.serving_error import (
    ServingError,
    code_from_number,
    invalid_argument,
    not_found,
)

log = logging.getLogger("tfbert.serve")

# ModelVersionStatus.State names.
START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    state: str
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""


def _version_dirs(base_path):
    """{version: path} for the integer-named subdirectories (TF Serving's SimpleAtoi)."""
    versions = {}
    for child in os.listdir(base_path):
        try:
            version = int(child)
        except ValueError:
            continue
        path = os.path.join(base_path, child)
        # A version directory without saved_model.pb is still being written (or is not a
        # model); it is not a version yet.
        if version >= 0 and os.path.isdir(path) and is_saved_model_dir(path):
            versions[version] = path
    return versions


def aspired_versions(policy, available):
    """The versions a ServableVersionPolicy asks for, among the ones on disk."""
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return set(available)
    if choice == "specific":
        return set(policy.specific.versions) & set(available)
    num_versions = policy.latest.num_versions if choice == "latest" else 0
    return set(sorted(available, reverse=True)[: max(num_versions, 1)])


def _fingerprint(path):
    pb = os.path.join(path, "saved_model.pb")
    target = pb if os.path.exists(pb) else os.path.join(path, "saved_model.pbtxt")
    try:
        stat = os.stat(target)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size)


class ModelManager:
    """Loads, serves and unloads model versions; thread-safe.

    Args:
        config: a ModelServerConfig with a model_config_list.
        poll_wait_seconds: seconds between file-system polls; 0 polls once at start.
        warmup: called with each newly loaded Servable before it is published; raising fails
            the load.
    """

    def __init__(self, config, poll_wait_seconds=1.0, warmup=None):
        self.poll_wait_seconds = poll_wait_seconds
        self._warmup = warmup
        self._models = {}  # name -> ModelConfig
        self._available = {}  # name -> {version: Servable}; replaced, never mutated
        self._states = {}  # name -> {version: VersionStatus}
        self._failed = {}  # (name, version) -> fingerprint of the version that failed
        self._state_lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._unloaders = []
        self._set_config(config)

    # -- configuration ---------------------------------------------------------------------

    def _set_config(self, config):
        models = {c.name: c for c in config.model_config_list.config}
        for c in models.values():
            if not os.path.isdir(c.base_path):
                # TF Serving refuses to start (and to reload) with a missing base path.
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Could not find base path {c.base_path} for servable {c.name}",
                )
        self._models = models

    def reload_config(self, config):
        """HandleReloadConfigRequest: serve exactly the models in `config`; waits for loads."""
        with self._poll_lock:
            self._set_config(config)
            for name in list(self._available):
                if name not in self._models:
                    for version in list(self._available.get(name, {})):
                        self._unpublish(name, version)
            self._poll_all()

    def model_names(self):
        return sorted(self._models)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self):
        """Loads the initial versions (blocking, as TF Serving does), then polls."""
        with self._poll_lock:
            self._poll_all()
        if self.poll_wait_seconds > 0:
            self._thread = threading.Thread(target=self._poll_loop, name="fs-poll", daemon=True)
            self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._poll_lock:
            for name in list(self._available):
                for version in list(self._available[name]):
                    self._unpublish(name, version)
        for thread in self._unloaders:
            thread.join()

    def _poll_loop(self):
        while not self._stop.wait(self.poll_wait_seconds):
            with self._poll_lock:
                if self._stop.is_set():
                    return
                self._poll_all()

    def poll(self):
        """One file-system poll now (tests and tools; the poll thread does this itself)."""
        with self._poll_lock:
            self._poll_all()

    def _poll_all(self):
        for config in list(self._models.values()):
            try:
                self._poll_model(config)
            except Exception:  # a poll must never kill the poll thread
                log.exception("polling model %s failed", config.name)

    def _poll_model(self, config):
        name = config.name
        if not os.path.isdir(config.base_path):
            log.warning("Could not find base path %s for servable %s", config.base_path, name)
            return
        on_disk = _version_dirs(config.base_path)
        aspired = aspired_versions(config.model_version_policy, on_disk)
        if not on_disk:
            log.warning(
                "No versions of servable %s found under base path %s. Did you forget to name "
                "your leaf directory as a number (eg. '/1/')?", name, config.base_path)
        loaded = set(self._available.get(name, {}))
        for version in sorted(aspired - loaded, reverse=True):
            fingerprint = _fingerprint(on_disk[version])
            if self._failed.get((name, version)) == fingerprint:
                continue
            self._load(name, version, on_disk[version], fingerprint)
        available = set(self._available.get(name, {}))
        # Availability preserving: drop old versions only once an aspired one serves, or
        # when nothing is aspired any more (the versions were deleted).
        if available & aspired or not aspired:
            for version in sorted(available - aspired):
                self._unpublish(name, version)

    def _set_state(self, name, version, state, code=grpc.StatusCode.OK, message=""):
        with self._state_lock:
            self._states.setdefault(name, {})[version] = VersionStatus(state, code, message)

    def _load(self, name, version, path, fingerprint):
        log.info("Loading servable: {name: %s version: %d} from %s", name, version, path)
        self._set_state(name, version, START)
        self._set_state(name, version, LOADING)
        start = time.monotonic()
        try:
            servable = Servable(name, version, path)
            if self._warmup is not None:
                self._warmup(servable)
        except Exception as e:  # noqa: BLE001 -- report any load failure as the version's status.
            if isinstance(e, ServingError):
                code, message = e.code, e.message
            elif isinstance(e, tf.errors.OpError):
                code, message = code_from_number(e.error_code), e.message
            else:
                code, message = grpc.StatusCode.UNKNOWN, f"{type(e).__name__}: {e}"
            log.error("Loading servable {name: %s version: %d} failed: %s", name, version, message)
            self._failed[(name, version)] = fingerprint
            self._set_state(name, version, END, code, message)
            return
        self._failed.pop((name, version), None)
        with self._state_lock:
            versions = dict(self._available.get(name, {}))
            versions[version] = servable
            self._available = {**self._available, name: versions}
            self._states.setdefault(name, {})[version] = VersionStatus(AVAILABLE)
        log.info(
            "Successfully loaded servable version {name: %s version: %d} in %.2fs",
            name, version, time.monotonic() - start)

    def _unpublish(self, name, version):
        with self._state_lock:
            versions = dict(self._available.get(name, {}))
            servable = versions.pop(version, None)
            if servable is None:
                return
            available = dict(self._available)
            if versions:
                available[name] = versions
            else:
                available.pop(name, None)
            self._available = available
            self._states.setdefault(name, {})[version] = VersionStatus(UNLOADING)

        def unload():
            servable.wait_idle()
            servable.unload()
            self._set_state(name, version, END)
            log.info("Unloaded servable version {name: %s version: %d}", name, version)

        thread = threading.Thread(target=unload, name=f"unload-{name}-{version}", daemon=True)
        self._unloaders = [t for t in self._unloaders if t.is_alive()] + [thread]
        thread.start()

    # -- requests --------------------------------------------------------------------------

    def acquire(self, name, version=None, label=None):
        """The servable a ModelSpec asks for, acquired; the caller must `release()` it.

        Errors as TF Serving's ServerCore::GetServableHandle: an unknown label is
        INVALID_ARGUMENT, a model or version that is not available is NOT_FOUND.
        """
        if label:
            config = self._models.get(name)
            if config is None or label not in config.version_labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = config.version_labels[label]
        with self._state_lock:
            versions = self._available.get(name, {})
            if version is None:
                servable = versions[max(versions)] if versions else None
                request = f"Latest({name})"
            else:
                servable = versions.get(version)
                request = f"Specific({name}, {version})"
            if servable is None:
                raise not_found(f"Servable not found for request: {request}")
            servable.acquire()
        return servable

    def version_states(self, name):
        """{version: VersionStatus} for every version of `name` the manager has seen."""
        with self._state_lock:
            return dict(self._states.get(name, {}))

    def available_versions(self, name):
        return sorted(self._available.get(name, {}))

