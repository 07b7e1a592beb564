"""The benchmark runs and reports (never its speed: numbers belong in BENCHMARKS.md).

`bench/run.py --smoke` goes through the same code as `--quick` with a tiny Karlo-shaped
pipeline; the full-size configurations are checked on the meta device (nothing allocated)
against the published sizes and the FLOP arithmetic of issue 6.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

QUICK_KEYS = {"overhead_ratio", "preview_speedup", "grid_speedup", "flops_per_frame",
              "flops_per_preview", "frames_equal", "grid_unique_frames", "seconds"}


def test_smoke_run_ends_with_one_json_object_with_the_ratios():
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--smoke"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    result = json.loads(last)
    assert isinstance(result, dict)
    assert QUICK_KEYS <= result.keys()
    assert result["mode"] == "smoke"
    for key in ("overhead_ratio", "preview_speedup", "grid_speedup"):
        assert result[key] > 0
    # Same work as the stock pipeline: the frames are the stock pipeline's frames.
    assert result["frames_equal"] is True
    assert result["grid_frames_equal_to_cells"] is True
    # 2x2 grid over theta in {0, 1}: every alpha gives the same two frames.
    assert result["grid_cells"] == 4 and result["grid_unique_frames"] == 2
    assert result["flops_per_frame"] > result["flops_per_preview"] > 0
    assert "measure" in proc.stdout  # the human-readable table comes first


def test_full_without_cuda_says_so_and_exits_2(capsys):
    from bench.run import EXIT_NO_GPU, main

    assert main(["--full", "--device", "cpu"]) == EXIT_NO_GPU == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def _millions(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def test_full_size_configs_have_the_published_sizes():
    from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from bench.models import karlo_configs, stable_configs

    k, s = karlo_configs("full"), stable_configs("full")
    assert k["decoder"]["block_out_channels"] == (320, 640, 960, 1280)
    assert k["text_proj"] == {"clip_embeddings_dim": 768, "time_embed_dim": 1280,
                              "cross_attention_dim": 1536}
    with torch.device("meta"):
        sizes = {
            "decoder": _millions(UNet2DConditionModel(**k["decoder"])),
            "super_res": _millions(UNet2DModel(**k["super_res_first"])),
            "vit_l14": _millions(CLIPVisionModelWithProjection(CLIPVisionConfig(**k["image_encoder"]))),
            "sd21_unet": _millions(UNet2DConditionModel(**s["unet"])),
            "sd_vae": _millions(AutoencoderKL(**s["vae"])),
            "vit_h14": _millions(CLIPVisionModelWithProjection(CLIPVisionConfig(**s["image_encoder"]))),
        }
    # Hundreds of millions each, as the real checkpoints (sizes of their weight files / 4 B).
    assert 850 < sizes["decoder"] < 920
    assert 650 < sizes["super_res"] < 720
    assert 300 < sizes["vit_l14"] < 310
    assert 860 < sizes["sd21_unet"] < 875
    assert 80 < sizes["sd_vae"] < 90
    assert 625 < sizes["vit_h14"] < 640


def test_full_size_flop_arithmetic_matches_issue_6():
    from bench.run import full_size_flops

    t = full_size_flops()
    assert t["karlo_decoder_step"] == pytest.approx(0.6, rel=0.05)
    assert t["karlo_super_res_step"] == pytest.approx(8.5, rel=0.05)
    assert t["vit_l14_encode"] == pytest.approx(0.16, rel=0.05)
    assert t["karlo_frame"] == pytest.approx(75, rel=0.05)
    assert t["karlo_frame_super_res_share"] == pytest.approx(0.8, abs=0.03)
    assert t["karlo_preview"] == pytest.approx(6.2, rel=0.05)
    assert t["stable_h_frame"] > t["stable_h_preview"] > 0
    # Kandinsky 2.2: 50 guided UNet steps dominate; a 1024 px step has (1024/768)^2 = 1.78x the
    # pixels (a little more work: attention grows faster); the 256 px, 12-step preview is cheap.
    step_ratio = t["kandinsky_unet_step_cfg_1024px"] / t["kandinsky_unet_step_cfg_768px"]
    assert step_ratio == pytest.approx(1.78, rel=0.1)
    assert t["kandinsky_frame_1024px"] > t["kandinsky_frame_768px"] > 20 * t["kandinsky_preview"] > 0
    assert 50 * t["kandinsky_unet_step_cfg_768px"] / t["kandinsky_frame_768px"] > 0.9


def test_full_size_kandinsky_has_the_published_sizes():
    """The authors' sizes: UNet 1.22 B, MoVQ 67 M, image encoder (ViT-bigG/14) 1.8 B."""
    from diffusers import UNet2DConditionModel, VQModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from bench.models import kandinsky_configs

    k = kandinsky_configs("full")
    with torch.device("meta"):
        unet = _millions(UNet2DConditionModel(**k["unet"]))
        movq = _millions(VQModel(**k["movq"]))
        vit = CLIPVisionModelWithProjection(CLIPVisionConfig(**k["image_encoder"]))
    assert 1200 < unet < 1270 and 66 < movq < 69 and 1830 < _millions(vit) < 1860
    assert vit.config.projection_dim == 1280
    quick = kandinsky_configs("quick")
    for key in ("down_block_types", "up_block_types", "layers_per_block", "mid_block_type"):
        assert quick["unet"][key] == k["unet"][key]
    assert quick["movq"]["down_block_types"] == k["movq"]["down_block_types"]


def test_scaled_down_karlo_keeps_the_block_types():
    from bench.models import karlo_configs

    full, quick = karlo_configs("full"), karlo_configs("quick")
    for unet in ("decoder", "super_res_first", "super_res_last"):
        for key in ("down_block_types", "up_block_types", "layers_per_block"):
            assert quick[unet][key] == full[unet][key]
    assert quick["decoder"]["mid_block_type"] == full["decoder"]["mid_block_type"]
    # The 4x super-resolution factor is kept.
    assert quick["super_res_first"]["sample_size"] == 4 * quick["decoder"]["sample_size"]


def _run_json(capsys, *args: str) -> dict:
    """bench/run.py's main in this process (the subprocess path is the smoke test's)."""
    from bench.run import main

    capsys.readouterr()
    assert main(list(args)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_full_mode_code_path_runs_scaled_down_on_the_cpu(capsys):
    result = _run_json(capsys, "--full", "--scale", "smoke", "--device", "cpu", "--models", "karlo",
                       "--toggles", "channels_last", "--frames", "2", "--reps", "1", "--preview-reps", "1")
    karlo = result["models"]["karlo"]
    assert karlo["flops_per_frame"] > karlo["flops_per_preview"] > 0
    for toggle in ("baseline", "channels_last"):
        row = karlo["toggles"][toggle]
        assert "error" not in row, row
        assert row["batched_s_per_frame"] > 0 and row["preview_s"] > 0
    assert karlo["toggles"]["baseline"]["max_pixel_diff_vs_stock"] <= 1
    assert karlo["toggles"]["baseline"]["max_pixel_diff_batched_vs_single"] <= 1
    assert "meets" not in result  # goals are judged on a GPU at full size only


def test_kandinsky_quick_and_full_code_paths_run_on_the_cpu(capsys):
    """--smoke --cpu-model kandinsky-2-2 against the stock KandinskyV22Pipeline (same frames),
    and --full --models kandinsky-2-2 scaled down: what a GPU run will go through."""
    quick = _run_json(capsys, "--smoke", "--cpu-model", "kandinsky-2-2")
    assert quick["model"] == "kandinsky-2-2" and quick["frames_equal"] is True
    assert quick["flops_per_frame"] > quick["flops_per_preview"] > 0
    full = _run_json(capsys, "--full", "--scale", "smoke", "--device", "cpu", "--models", "kandinsky-2-2",
                     "--toggles", "--frames", "2", "--reps", "1", "--preview-reps", "1")
    row = full["models"]["kandinsky-2-2"]["toggles"]["baseline"]
    assert "error" not in row, row
    assert row["max_pixel_diff_vs_stock"] <= 1 and row["max_pixel_diff_batched_vs_single"] <= 1


def test_real_mode_code_path_runs_on_a_local_pipeline(tmp_path, capsys):
    from bench.models import write_pipeline

    model_dir, _ = write_pipeline("karlo", "smoke", tmp_path / "karlo")
    result = _run_json(capsys, "--real", str(model_dir), "--device", "cpu", "--frames", "3",
                       "--out", str(tmp_path / "frames"))
    assert result["mode"] == "real"
    assert result["checks"]["no_black_or_flat_frame"] in (True, False)
    assert result["checks"]["conformity"]["kind"] in ("exact", "estimated")
    assert len(list((tmp_path / "frames").glob("*.png"))) == 3 + 5  # theta and alpha sweeps
