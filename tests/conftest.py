"""Shared fixtures: a real ``codecloop serve`` process on a free loopback port; the test tiers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping

import numpy as np
import pytest

import codecloop
from codecloop.local import LocalServer

SERVERS: dict[str, LocalServer] = {}  # target -> the launcher of that server


class _ServerLines(Mapping[str, list[str]]):
    """target -> what that server has printed so far (all of its log)."""

    def __getitem__(self, target: str) -> list[str]:
        return SERVERS[target].lines

    def __iter__(self) -> Iterator[str]:
        return iter(SERVERS)

    def __len__(self) -> int:
        return len(SERVERS)


SERVER_LINES = _ServerLines()


def _start_server(extra: list[str]) -> tuple[subprocess.Popen, str]:
    """A ``codecloop serve`` with 2 workers (``extra``: more flags) on a free loopback port, started by
    the SDK's launcher (codecloop.local.LocalServer) and stopped by the test. It runs in its own
    process group, so that a test can kill -9 the server with its workers."""
    server = LocalServer(args=["--workers", "2", *extra], start_timeout=300, log_lines=None)  # first run builds the embedded corpus (~15 s)
    target = server.start()
    SERVERS[target] = server
    return server.process, target


@pytest.fixture(scope="session")
def server_target(tmp_path_factory) -> str:
    """Target of a server with the built-in corpora plus a folder dataset ``tiny`` (two .npy sources)."""
    folder = tmp_path_factory.mktemp("tiny")
    clips = np.random.default_rng(7).integers(0, 256, (4, 8, 32, 48, 3), dtype=np.uint8)
    np.save(folder / "a.npy", clips[:3])  # two sources: the holdout is by source (b.npy)
    np.save(folder / "b.npy", clips[3:])
    keyless = folder / "keyless.pt"
    save_keyless_detector(keyless)
    proc, target = _start_server(
        ["--dataset", f"tiny={folder}", "--metrics-port", "0", "--detector", "example=example", "--detector", f"keyless={keyless}",
         "--detector-device", "cpu", "--max-batch-size", "8", "--max-queue-delay-us", "20000"]
    )  # fmt: skip
    yield target
    died = proc.poll()
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    if died is not None:  # it should have served the whole session: show why it did not
        pytest.fail(f"the session server exited early with code {died}; its last lines:\n" + "".join(SERVER_LINES[target][-60:]))


@pytest.fixture()
def metrics_url(server_target: str) -> str:
    """The session server's Prometheus endpoint."""
    return next(m.group(1) for line in SERVER_LINES[server_target] if (m := re.search(r"metrics on (\S+)", line)))


@pytest.fixture()
def client(server_target: str):
    with codecloop.Client(server_target, timeout=300) as c:
        yield c


def save_keyless_detector(path) -> None:
    """A detector that takes clips only: the mean absolute vertical gradient of each clip."""
    import torch

    class Keyless(torch.nn.Module):
        def forward(self, clips: torch.Tensor) -> torch.Tensor:
            return (clips[:, :, 1:] - clips[:, :, :-1]).abs().mean(dim=(1, 2, 3, 4))

    torch.jit.save(torch.jit.script(Keyless()), str(path))


def block_signature(seed: int, block: int = 8, shape: tuple[int, int, int] = (1, 112, 112)) -> np.ndarray:
    """A random +-1 signature of constant block x block squares, float32 (T, H, W, 3)."""
    from codecloop.cli import random_signature

    sig = random_signature(f"block{block}" if block > 1 else "pixel", shape, seed)
    return np.repeat(sig, shape[0], axis=0) if shape[0] > 1 else sig


def ffmpeg_or_skip() -> str:
    """Path of the ffmpeg CLI; in CI (CI=true) its absence is a failure, not a skip."""
    path = shutil.which("ffmpeg")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("ffmpeg CLI missing in CI: .ci/run must apt-get install ffmpeg")
        pytest.skip("ffmpeg CLI not installed")
    return path


def error_lines(stderr: str) -> list[str]:
    """A CLI command's stderr without the lines naming its server (codecloop.serverpick) and dataset split."""
    naming = ("codecloop: server ", "codecloop: private server ", "codecloop: starting a local server ", "codecloop: dataset ")
    return [line for line in stderr.strip().splitlines() if not line.startswith(naming)]


# --- test tiers ------------------------------------------------------------------------------------
# `pytest -m "not slow"` (make test-fast) leaves these out; `make test` runs everything. Chosen from
# `pytest --durations=0` runs on the shared 2-core VM (the whole suite; then the test files merged
# after it, on a busier machine): each took about 3.5 s or more (5 s in the busier run): its own server
# processes, subprocess CLIs, 1080p videos, mypy. All of a test's parametrizations are in its tier.
# A name here that its file no longer defines fails collection.
SLOW_TESTS: dict[str, tuple[str, ...]] = {
    "test_architecture.py": ("test_sdk_imports_neither_server_nor_codec_stack", "test_server_imports_no_sdk"),
    "test_carriers.py": ("test_server_flag_and_sdk_publish_the_policy",),
    "test_channels.py": ("test_cli_evaluate_and_optimize_over_channels",),
    "test_corpus.py": ("test_ten_minute_720p_video_streams_in_bounded_memory",),
    "test_detect.py": (
        "test_bad_input_is_refused_with_exit_2_and_one_line_naming_it", "test_detect_cli_json_and_bounded_memory_on_a_long_1080p_video",
        "test_clean_videos_against_many_keys_are_not_called_marked", "test_marked_video_after_crf28_is_detected_and_the_clean_copy_is_not",
        "test_a_changed_frame_rate_is_undone_by_timestamps", "test_a_static_signature_and_a_video_shorter_than_its_period",
    ),
    "test_dataset_view.py": ("test_cli_info_lists_each_file_its_split_and_the_skipped_ones",),
    "test_epsilon.py": ("test_optimize_target_tpr_then_the_epsilon_command_on_its_signature",),
    "test_leadchannel.py": ("test_a_run_with_a_lead_channel_logs_its_stages_and_counts_the_encodes_saved",),
    "test_deployment.py": ("test_entrypoint_and_healthcheck_run_as_in_the_image",),
    "test_detect_served.py": (
        "test_marked_video_is_detected_with_the_example_detector_and_the_clean_one_is_not", "test_detect_cli_with_a_detector_json_and_bad_input_in_one_line",
    ),
    "test_detector.py": (
        "test_concurrent_clients_share_detector_batches", "test_training_script_exports_a_loadable_detector_in_both_formats",
        "test_serve_refuses_a_bad_detector_file_in_one_line", "test_servers_in_one_process_keep_their_detectors_apart",
    ),
    "test_determinism.py": ("test_servers_answer_identically", "test_request_may_pin_the_level"),  # one two-server fixture
    "test_faults.py": ("test_fuzzed_calls_get_clean_statuses", "test_killed_worker_is_replaced_and_the_request_completes", "test_per_client_call_limit"),
    "test_faults_redteam.py": (
        "test_sigterm_with_a_stopped_worker_exits", "test_memory_bound_holds_for_the_largest_allowed_request",
        "test_stopped_worker_is_replaced_and_health_follows", "test_clean_cache_bound_holds_under_cancellation",
        "test_inline_request_resent_after_deadline_and_joined_by_another", "test_cancelling_streams_at_once_never_crashes_the_server",
        "test_cancelled_streams_run_none_of_their_clean_encodes",
    ),
    "test_file_channel.py": ("test_channel_on_a_file_writes_what_the_channel_delivers", "test_bad_channel_or_input_exit_2_one_line"),
    "test_local.py": ("test_cli_without_target_serves_a_folder", "test_ctrl_c_stops_the_private_server"),
    "test_mark.py": (
        "test_a_long_1080p_video_is_marked_in_bounded_memory", "test_bad_input_is_refused_with_exit_2_and_one_line_naming_the_problem",
        "test_mark_round_trip_keeps_size_rate_length_audio_and_the_mark",
    ),
    "test_optimize.py": (
        "test_cli_optimize_end_to_end",
        "test_run_resumes_without_losing_or_repeating",
        "test_a_ranked_run_is_not_stopped_by_its_constant_best_rank",
        "test_checkpoints_at_most_every_interval_and_a_resume_reruns_the_rest_exactly",
    ),
    "test_readme_outputs.py": ("test_readme_example_outputs_are_current",),
    "test_replicas.py": ("test_run_survives_a_killed_replica",),
    "test_resume.py": (
        "test_a_rerun_with_other_settings_is_refused_the_same_resumes_overwrite_restarts",
        "test_limits_that_leave_no_generation_are_refused_by_flag_and_write_nothing",
        "test_sdk_run_refuses_other_settings_and_an_old_checkpoint_is_compared_by_config",
    ),
    "test_results.py": ("test_a_run_folder_shows_the_signature_frames_and_fidelity_after_the_codec",),
    "test_security.py": ("test_plaintext_beyond_loopback_and_bad_settings_refused",),
    "test_serverpick.py": ("test_an_unusable_default_falls_back_to_a_private_server", "test_the_default_is_used_when_usable_and_local_forces_a_private_server"),
    "test_sharing.py": ("test_three_optimizer_processes_share_one_server",),
    "test_statistics.py": (
        "test_keyed_detector_empirical_null_is_the_model_on_moved_keys", "test_null_p_values_are_calibrated_on_real_clips",
        "test_cli_evaluate_json_carries_intervals_and_p_values",
    ),
    "test_style.py": ("test_mypy_strict_on_wire_and_engine",),
    "test_torch.py": ("test_gradient_backend_short", "test_gradient_run_resumes_from_checkpoint"),
    "test_user_mistakes.py": ("test_mistakes_refused_before_any_server_starts", "test_mistakes_refused_against_a_server"),
}  # fmt: skip


@pytest.hookimpl(tryfirst=True)  # mark before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests named in SLOW_TESTS ``slow``; refuse names their file does not define."""
    modules = {}
    for item in items:
        names = SLOW_TESTS.get(item.path.name)
        if names is None or not isinstance(item, pytest.Function):
            continue
        modules[item.path.name] = item.module
        if item.originalname in names:
            item.add_marker(pytest.mark.slow)
    missing = [f"{file}::{name}" for file, module in modules.items() for name in SLOW_TESTS[file] if not hasattr(module, name)]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py SLOW_TESTS names tests that do not exist: {', '.join(missing)}")


# VmHWM (peak RSS of this process image, KiB): ru_maxrss would start at the forking test process's peak
PEAK_RSS = """
import re, sys
from codecloop.cli import main
hwm = lambda: int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
before = hwm()
rc = main(sys.argv[1:])
print(rc, before, hwm())
"""
