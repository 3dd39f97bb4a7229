"""Model swaps in-process: ModelSlot against a real (temporary) registry with real tiny bundles."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

from services.reloader import ModelSlot, ReloadFailed, load_model
from tests.services.helpers import MINIMAL_EVIDENCE, corrupt, tmp_registry


@pytest.fixture()
def registry_with_two_versions(tmp_path, classifier_bundle, positive_bundle):
    registry = tmp_registry(tmp_path)
    assert registry.register("tiny", classifier_bundle, MINIMAL_EVIDENCE).version == 1
    assert registry.register("tiny", positive_bundle, MINIMAL_EVIDENCE).version == 2
    registry.set_alias("tiny", "production", 1, reason="test")
    return registry


def _slot(registry, alias="production") -> ModelSlot:
    path = registry.load_path("tiny", version=1, verify=True)
    return ModelSlot(load_model(path, "tiny", "1"), alias=alias, poll_s=0, registry=registry)


def test_alias_move_swaps_to_the_new_version_after_checks(registry_with_two_versions):
    registry = registry_with_two_versions
    slot = _slot(registry)
    old = slot.current
    assert slot.poll_once() is None  # alias still on v1: nothing to do
    registry.set_alias("tiny", "production", 2, reason="test")
    result = slot.poll_once()
    assert result["swapped"] is True and result["from_version"] == "1" and result["to_version"] == "2"
    assert slot.current.version == "2" and slot.current is not old
    assert slot.current.predictor.classify(["anything"])[0]["label"] == "positive"  # v2's head
    assert old.predictor.classify(["still usable"])  # a request holding v1 finishes on it
    assert slot.status()["last_reload"]["to_version"] == "2"
    assert slot.reload(2, reason="again") == {
        "swapped": False,
        "version": "2",
        "message": "v2 is already serving",
    }


def test_corrupted_artifact_is_refused_and_the_old_version_keeps_serving(registry_with_two_versions):
    registry = registry_with_two_versions
    slot = _slot(registry)
    v2 = registry.get_version("tiny", version=2)
    corrupt(v2.path / "onnx" / "int8" / "model.onnx")
    registry.set_alias("tiny", "production", 2, reason="test")
    assert slot.poll_once() is None
    assert slot.current.version == "1"
    error = slot.status(operator=True)["last_reload_error"]
    assert (
        error["version"] == "v2"
        and "onnx/int8/model.onnx" in error["error"]
        and "v1 keeps serving" in error["error"]
    )
    public = slot.status()["last_reload_error"]  # what /metadata shows: the kind of failure, no path
    assert (
        public["version"] == "v2"
        and "verification" in public["error"]
        and "v1 keeps serving" in public["error"]
    )
    assert "model.onnx" not in public["error"] and "/" not in public["error"].replace("/probe", "")
    assert slot.poll_once() is None and slot.status()["last_reload_error"]["at"] == error["at"]  # not retried
    with pytest.raises(ReloadFailed) as by_hand:  # an admin reload retries at once, and fails the same way
        slot.reload(2, reason="admin")
    assert by_hand.value.status == 422


def test_unknown_version_task_change_and_missing_target_are_refused(registry_with_two_versions, ner_bundle):
    registry = registry_with_two_versions
    slot = _slot(registry)
    with pytest.raises(ReloadFailed) as unknown:
        slot.reload(9, reason="admin")
    assert unknown.value.status == 404 and "v9" in str(unknown.value)
    assert registry.register("tiny", ner_bundle, MINIMAL_EVIDENCE).version == 3
    with pytest.raises(ReloadFailed, match="task change") as task_change:
        slot.reload(3, reason="admin")
    assert task_change.value.status == 422
    assert slot.current.version == "1"
    without_alias = _slot(registry, alias=None)
    with pytest.raises(ReloadFailed, match="nothing to reload"):
        without_alias.reload(None, reason="admin")


def test_one_reload_at_a_time(registry_with_two_versions):
    slot = _slot(registry_with_two_versions)
    entered, release = threading.Event(), threading.Event()
    real_loader = slot._loader

    def slow_loader(path, name, version):
        entered.set()
        release.wait(10)
        return real_loader(path, name, version)

    slot._loader = slow_loader
    worker = threading.Thread(target=slot.reload, args=(2,), kwargs={"reason": "first"})
    worker.start()
    assert entered.wait(10)
    with pytest.raises(ReloadFailed) as busy:
        slot.reload(2, reason="second")
    assert busy.value.status == 409 and slot.status()["reloading"] is True
    release.set()
    worker.join(10)
    assert slot.current.version == "2"


def test_a_reload_to_a_version_pins_it_until_a_reload_without_one(registry_with_two_versions):
    registry = registry_with_two_versions
    registry.set_alias("tiny", "production", 2, reason="test")
    slot = _slot(registry)
    slot.poll_s = 10  # following the alias (the thread is not started: polls are called by hand)
    assert slot.pin(1, reason="admin")["pinned_version"] == "1"
    assert slot.status()["following_alias"] is False
    assert slot.poll_once() is None and slot.current.version == "1"  # the alias (v2) is not followed
    back = slot.pin(None, reason="admin")
    assert back["swapped"] is True and back["to_version"] == "2" and back["following_alias"] is True
    registry.set_alias("tiny", "production", 1, reason="test")
    assert slot.poll_once()["to_version"] == "1"  # following again


def test_a_swapped_out_model_is_freed_without_the_cycle_collector(registry_with_two_versions):
    """Serving freezes the loaded objects out of the garbage collector (services/heap.py), after each swap
    too; that is only safe while a model holds no reference cycles, so reference counting alone frees it."""
    slot = _slot(registry_with_two_versions)
    frozen_before = gc.get_freeze_count()
    old_predictor = weakref.ref(slot.current.predictor)
    gc.disable()
    try:
        assert slot.reload(2, reason="test")["swapped"] is True
        assert gc.get_freeze_count() > frozen_before  # the new model was frozen in
        assert old_predictor() is None  # v1 already gone, with the collector off
    finally:
        gc.enable()
        gc.unfreeze()
