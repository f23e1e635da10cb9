"""The CLI as a user runs it: a real subprocess, real files."""
import json
import subprocess
import sys

import pytest

from sana_serve.engine.video import decode_video


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "sana_serve", *args], capture_output=True, text=True, timeout=timeout)


def assert_clean_error(proc, *needles):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("sana-serve: error:"), proc.stderr
    for n in needles:
        assert n in last, last


def test_generate_writes_a_decodable_video_and_report(tmp_path):
    out, report = tmp_path / "v.mp4", tmp_path / "r.json"
    proc = run("generate", "--prompt", "a red circle moving left on a gray background", "--seconds", "2.5",
               "--seed", "2", "--out", str(out), "--report", str(report), "--quiet")
    assert proc.returncode == 0, proc.stderr
    frames = decode_video(out)
    assert frames.shape == (40, 64, 64, 3)
    r = json.loads(report.read_text())
    # 40 frames = 10 latent frames: a short first block (2) and one full block (8)
    assert [b["frames"] for b in r["blocks"]] == [8, 32]
    assert r["time_to_first_block_s"] > 0 and r["peak_rss_bytes"] > 0 and r["state_bytes"] > 0
    assert all(b["seconds"] > 0 for b in r["blocks"])


@pytest.mark.parametrize("args,needles", [
    (["--config", "no-such-model"], ["unknown config", "no-such-model"]),
    (["--seconds", "-2"], ["--seconds", "positive"]),
    (["--seconds", "abc"], ["--seconds"]),
    (["--seed", "-1"], ["--seed"]),
    (["--out", "/nonexistent-dir/x.mp4"], ["does not exist"]),
    (["--out", "/etc/hostname/x.mp4"], ["--out"]),
    (["--out", "video.avi"], [".mp4"]),
    (["--checkpoint", "/tmp"], ["--checkpoint"]),
])
def test_bad_arguments_give_one_clear_line(tmp_path, args, needles):
    base = {"--prompt": "a red circle moving left on a gray background", "--seconds": "1",
            "--out": str(tmp_path / "x.mp4")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = ["generate"] + [x for kv in base.items() for x in kv]
    proc = run(*argv, timeout=120)
    assert_clean_error(proc, *needles)
    assert not (tmp_path / "x.mp4").exists()


def test_missing_command_and_unknown_flag():
    assert_clean_error(run())
    assert_clean_error(run("generate", "--prompt", "x", "--seconds", "1", "--out", "a.mp4", "--bogus"), "--bogus")


def test_eval_first_block_steps_override_is_recorded(tmp_path):
    report = tmp_path / "eval.json"
    proc = run("eval", "--set", "template", "--limit", "1", "--seconds", "1", "--first-chunk-steps", "2",
               "--json", str(report))
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    assert r["sampling"]["first_chunk_steps"] == 2 and r["sampling"]["steps"] == 4
    assert r["seed_base"] == 1000 and r["results"][0]["seed"] == 1000
    assert r["summary"]["template"]["videos"] == 1 and "template" in proc.stdout


def test_eval_seed_base_moves_every_seed(tmp_path):
    report = tmp_path / "eval.json"
    proc = run("eval", "--set", "template", "--set", "heldout", "--limit", "2", "--seconds", "0.5",
               "--seed-base", "5000", "--json", str(report))
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    assert r["seed_base"] == 5000
    assert [x["seed"] for x in r["results"]] == [5000, 5001, 5000, 5001]


@pytest.mark.parametrize("args,needles", [
    (["--seed-base", "-3"], ["--seed-base", "non-negative"]),
    (["--first-chunk-steps", "0"], ["--first-chunk-steps", ">= 1"]),
    (["--first-chunk-steps", "8", "--steps", "4"], ["--first-chunk-steps", "--steps"]),
])
def test_eval_bad_sampling_overrides_give_one_clear_line(args, needles):
    assert_clean_error(run("eval", "--set", "template", "--limit", "1", *args, timeout=120), *needles)


def test_train_bad_cooldown_gives_one_clear_line(tmp_path):
    proc = run("train", "transformer", "--work", str(tmp_path), "--steps", "10", "--cooldown", "20", timeout=120)
    assert_clean_error(proc, "--cooldown", "--steps")


def test_train_latent_noise_outside_zero_to_one_gives_one_clear_line(tmp_path):
    proc = run("train", "vae", "--work", str(tmp_path), "--latent-noise", "-1", timeout=120)
    assert_clean_error(proc, "--latent-noise", "between 0 and 1")


def test_train_own_context_outside_zero_to_one_gives_one_clear_line(tmp_path):
    proc = run("train", "transformer", "--work", str(tmp_path), "--own-context", "50", timeout=120)
    assert_clean_error(proc, "--own-context", "between 0 and 1")


def test_freeze_encoder_without_a_trained_vae_gives_one_clear_line(tmp_path):
    proc = run("train", "vae", "--work", str(tmp_path), "--freeze-encoder", timeout=120)
    assert_clean_error(proc, "--freeze-encoder", "train the VAE first")


def test_train_vae_frames_not_a_multiple_of_the_temporal_compression_gives_one_clear_line(tmp_path):
    proc = run("train", "vae", "--work", str(tmp_path), "--frames", "18", timeout=120)
    assert_clean_error(proc, "frames", "multiple of 4")
