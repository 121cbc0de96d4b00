"""One end-to-end smoke run of `train.py --stage all` with a few steps per stage and tiny models.

The numbers it produces are meaningless (3 training steps); what it checks is the plumbing a
user relies on: every stage runs in order on a freshly generated dataset, each writes its
checkpoint and STAGE.json, eval writes the results table with the Real, MLD, LEAD, ablation and
ATM rows, inversion adds its tables and saves words, sample writes motions, `--resume` skips
finished stages, and `--no-realign` gives MLD samples.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import pytest

import config
import loop
import runfolder
import train

SMOKE = [  # run.threads, vae.time_slots, guidance as when smoke_figures.json was recorded (tiny preset: 2, 32, 5.5)
    "run.threads=1", "vae.time_slots=0", "diffusion.guidance_scale=7.5",
    "data.synthetic_motions=300",
    "text.num_layers=1", "text.hidden_size=32", "text.intermediate_size=64", "text.projection_dim=32",
    "text.pretrain_steps=3", "text.pretrain_batch=8", "text.pretrain_warmup=1",
    "evaluator.dim_word=16", "evaluator.dim_text_hidden=16", "evaluator.dim_movement_enc_hidden=16",
    "evaluator.dim_movement_latent=16", "evaluator.dim_motion_hidden=16", "evaluator.dim_coemb_hidden=16",
    "vae.n_layers=1", "vae.latent_dim=16", "vae.ff_dim=32",
    "diffusion.n_layers=1", "diffusion.ff_dim=32", "diffusion.sample_steps=3",
    "projector.n_layers=1", "projector.ff_dim=32",
    "evaluator_train.steps=3", "vae_train.steps=3", "diffusion_train.steps=3", "projector_train.steps=3",
    "evaluator_train.batch_size=8", "vae_train.batch_size=8", "diffusion_train.batch_size=8",
    "projector_train.batch_size=8",
    "eval.replications=1", "eval.mm_num_texts=2", "eval.mm_num_gens=10", "eval.timing_prompts=1",
    "eval.diversity_times=10",
    "atm_train.steps=3", "atm_train.batch_size=8",
    "inversion.test_motions=2", "inversion.generations=2", "inversion.styles=1", "inversion.steps=2",
    "lamp.vq_codes=16", "lamp.vq_code_dim=8", "lamp.vq_width=16", "lamp.vq_depth=1", "lamp.hidden_size=16",
    "lamp.n_layers=1", "lamp.n_heads=2", "lamp.ff_dim=32", "lamp.embed_dim=8",
    "lamp_vq_train.steps=3", "lamp_train.steps=3", "lamp_vq_train.batch_size=8", "lamp_train.batch_size=8",
    "mate.latent_dim=16", "mate.n_layers=1", "mate.ff_dim=32", "mate_train.steps=3", "mate_train.batch_size=8",
    "mate.probe_captions=2",
    "lcm_train.steps=3", "lcm_train.batch_size=8", "lcm.w_embed_dim=8",
    "lamp_t2m.width=16", "lamp_t2m.n_layers=1", "lamp_t2m.n_heads=2", "lamp_t2m.ff_dim=32", "lamp_t2m.iterations=3",
    "lamp_t2m_train.steps=3", "lamp_t2m_train.batch_size=8",
    "lamp_m2t.lm_width=16", "lamp_m2t.lm_layers=1", "lamp_m2t.lm_heads=2", "lamp_m2t.lm_ff=32", "lamp_m2t.beams=2",
    "lamp_m2t_lm_train.steps=3", "lamp_m2t_lm_train.batch_size=8", "lamp_m2t_train.steps=3",
    "lamp_m2t_train.batch_size=8",
]


def smoke_args(tmp_path, *extra):
    args = ["--out", str(tmp_path / "run"), "--synthetic-dir", str(tmp_path / "synthetic"),
            "--device", "cpu", *extra]
    for item in SMOKE:
        args += ["--set", item]
    return args


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("e2e")
    code = train.main(["--stage", "all", "--ablations", *smoke_args(tmp_path)])
    assert code == 0
    return tmp_path


SKIPPED_FIGURES = ("wall_time_s", "fit_s", "segmentation_s", "s / prompt", "files", "timing")


def _figures(tree, prefix="") -> dict:
    """Every number in a results.json section or a STAGE.json, by its path; times and file lists left out."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() if key not in SKIPPED_FIGURES
                for k, v in _figures(sub, f"{prefix}/{key}").items()}
    if isinstance(tree, list) and tree and all(isinstance(x, (int, float)) for x in tree):
        return {f"{prefix}/{i}": x for i, x in enumerate(tree)}
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return {prefix: tree}
    return {}


def test_the_smoke_run_reproduces_the_figures_recorded_before_the_redesign(smoke_run):
    """Behaviour unchanged by the redesign (issue 26): every table cell and every figure each stage
    recorded (losses, errors, metrics; not times) equals what the pre-redesign code wrote for this
    configuration and seed (tests/fixtures/smoke_figures.json, from `--stage all --ablations` with SMOKE)."""
    run = smoke_run / "run"
    results = json.loads((run / "results.json").read_text())
    now = {}
    for section, table in results.items():
        if section != "timing":
            now.update(_figures(table["rows"], f"results/{section}"))
    for path in run.glob("*.json"):
        if path.name != "results.json":
            now.update(_figures(json.loads(path.read_text()), path.stem))
    recorded = json.loads((Path(__file__).parent / "fixtures" / "smoke_figures.json").read_text())
    # figures of features added since (new stages, new columns) are new keys; none recorded may go
    assert sorted(set(recorded) - set(now)) == []
    different = {k: (recorded[k], now[k]) for k in recorded if now[k] != pytest.approx(recorded[k], rel=1e-5, abs=1e-7)}
    assert not different, f"{len(different)} of {len(recorded)} figures changed, e.g. {list(different.items())[:5]}"


def test_every_stage_wrote_its_outputs(smoke_run):
    run = smoke_run / "run"
    for stage in train.ALL_ORDER:
        figures = json.loads((run / f"{stage}.json").read_text())
        assert figures["wall_time_s"] >= 0
    for name in ("vae", "diffusion", "projector", "evaluator", "alignment", "diffusion_atm", "diffusion_mse",
                 "diffusion_atm_inter", "diffusion_atm_intra", "mate", "lcm",
                 "diffusion_mate", "projector_mate", "lamp", "lamp_vq", "lamp_m2t_lm", "lamp_m2t",
                 *train.PROJECTOR_ABLATIONS, *train.MATE_ABLATIONS, *train.LAMP_ABLATIONS, *train.T2M_ROWS,
                 *train.T2M_ABLATIONS,
                 *(f"diffusion_{name}" for name in train.MATE_ABLATIONS)):
        state = loop.load_checkpoint(run / f"{name}.pt", name)
        assert state["done"] and state["step"] == 3
    assert (run / "text_encoder" / "vocab.json").exists()
    # the evaluator ran before the VAE, so the VAE stage scored its reconstructions with it
    recon = json.loads((run / "vae.json").read_text())["test_reconstruction"]
    assert set(recon) == {"real", "reconstruction"}
    assert "FID" not in recon["real"] and recon["reconstruction"]["FID"] > 0.0
    for row in recon.values():
        assert 0.0 <= row["R-precision top-1"] <= row["R-precision top-3"] <= 1.0 and row["MMdist"] > 0.0


def test_ablation_checkpoints_load_as_their_stage_wrote_them(smoke_run):
    """--ablations' MATE Tab. 3 and LaMP Tab. 5 variants are named after the stage that writes
    them, load through finished / load_model, and hold their removed terms' zero weights."""
    run = runfolder.Run(cfg=config.build_config("tiny", []), out=smoke_run / "run", data_root=smoke_run / "synthetic",
                    synthetic=True, device=torch.device("cpu"), clip=None, resume=False, args=None)
    for name, (_, overrides) in train.LAMP_ABLATIONS.items():
        assert runfolder.stage_of(name) == "lamp"
        model = runfolder.load_model(run, name)
        assert all(getattr(model.cfg, k) == v == 0.0 for k, v in overrides.items())
    for name, (_, overrides) in {**train.T2M_ROWS, **train.T2M_ABLATIONS}.items():  # LaMP Tab. 6
        assert runfolder.stage_of(name) == "lamp_t2m"
        model = runfolder.load_model(run, name)
        assert all(getattr(model.cfg, k) == v for k, v in overrides.items())
    for name, (_, overrides) in train.MATE_ABLATIONS.items():
        assert runfolder.stage_of(name) == runfolder.stage_of(f"diffusion_{name}") == "mate"
        assert all(runfolder.finished(run, name)["config"][k] == v == 0.0 for k, v in overrides.items())
        assert runfolder.load_model(run, f"diffusion_{name}").text_dim == runfolder.load_model(run, "diffusion").text_dim
        # the variant's pipeline reads the variant's word table, not the full model's
        table = runfolder.pipeline(run, f"diffusion_{name}", mate=name).text.word_embeddings.weight
        assert torch.equal(table.cpu(), runfolder.finished(run, name)["model"]["word_table"])
        assert not torch.equal(table.cpu(), runfolder.finished(run, "mate")["model"]["word_table"])


def test_sampling_follows_the_run_config_not_the_checkpoint(smoke_run):
    """diffusion.pt was trained under SMOKE's 3 DDIM steps and MLD's guidance 7.5; a run opened with
    other sampling settings (--set diffusion.guidance_scale=2.5 ...) samples with those."""
    run = runfolder.open_run(smoke_run / "run", data_root=smoke_run / "synthetic", device="cpu",
                             sets=["diffusion.guidance_scale=2.5", "diffusion.sample_steps=4"])
    assert runfolder.finished(run, "diffusion")["config"]["guidance_scale"] == 7.5
    sampling = runfolder.pipeline(run).schedule.cfg
    assert (sampling.guidance_scale, sampling.sample_steps) == (2.5, 4)


def test_results_table_has_the_papers_rows(smoke_run):
    results = json.loads((smoke_run / "run" / "results.json").read_text())
    rows = results["t2m"]["rows"]
    assert list(rows)[:3] == ["Real", "MLD", "LEAD"]
    assert "LEAD w/o L_align" in rows and "LEAD (mlp)" in rows
    assert "MLD+ATM" in rows and "LEAD+ATM" in rows
    assert {"MLD (+3 steps, L_mse only)", "LEAD (+3 steps, L_mse only)"} <= set(rows), "ATM's equal-budget control"
    assert {"MLD+ATM (L_inter only)", "MLD+ATM (L_intra only)"} <= set(rows), "ATM Tab. 3 under --ablations"
    assert "MLD+MATE" in rows and "LEAD+MATE" in rows
    assert "MotionLCM" in rows and "LEAD (MotionLCM)" in rows
    assert [row for row, _ in {**train.T2M_ROWS, **train.T2M_ABLATIONS}.values()] == list(rows)[-4:], "LaMP Tab. 6"
    steps = results["lcm_steps"]["rows"]
    assert {f"{m}, {n} step{'s' if n > 1 else ''}" for m in ("MotionLCM", "LEAD (MotionLCM)") for n in (1, 2, 4)} == set(steps)
    assert all(row["s / prompt"][0] > 0 for row in steps.values())
    assert "mate_probe" in results and "mate_segmentation" in results
    captions = results["lamp_m2t"]["rows"]  # LaMP Tab. 4
    assert list(captions) == ["LaMP-M2T", "Retrieval (nearest training motion)", "Human (another annotator)"]
    assert all(0 <= row["BLEU@4"][0] <= row["BLEU@1"][0] <= 100 and row["MMdist"][0] > 0 for row in captions.values())
    assert list(results["mate_ablation"]["rows"]) == [*(row for row, _ in train.MATE_ABLATIONS.values()),
                                                      "Full Model"], "MATE Tab. 3 under --ablations"
    assert {"Real", "MTI_lead", "MTI_lead w/ project"} <= set(results["mti"]["rows"])
    assert "mti_styles" in results
    assert "MModality" in rows["LEAD"] and "MModality" not in rows["Real"]
    assert all(0 < row["LaMP-BertScore"][0] <= 100 and row["LaMP-BertScore"][1] == 0 for row in rows.values())
    fit = results["t2m_fit"]["rows"]  # the same rows on training clips, one replication, no MModality
    assert list(fit) == list(rows) and "MModality" not in fit["LEAD"] and fit["LEAD"]["FID"][1] == 0.0
    assert "training clips" in results["t2m_fit"]["note"]
    assert set(results["timing"]["rows"]) == {"MLD", "LEAD", "LaMP-T2M"}
    assert "latent_structure" in results
    md = (smoke_run / "run" / "results.md").read_text()
    assert "| Real |" in md and "| LEAD |" in md


def test_samples_are_written_as_features_joints_and_gifs(smoke_run):
    files = sorted(f for f in (smoke_run / "run" / "samples").iterdir() if f.is_file())
    assert list((smoke_run / "run" / "tokens").glob("*_lead.pt")), "inversion saves its style words"
    joints = [f for f in files if f.name.endswith("_joints.npy")]
    assert len(joints) == len(train.DEFAULT_PROMPTS)
    motion = np.load(joints[0])
    assert motion.shape == (120, 22, 3) and np.isfinite(motion).all()
    features = np.load(str(joints[0]).replace("_joints", "_features"))
    assert features.shape == (120, 263)
    pytest.importorskip("matplotlib")
    assert len([f for f in files if f.suffix == ".gif"]) == len(train.DEFAULT_PROMPTS)


def test_resume_skips_finished_stages(smoke_run, capsys):
    code = train.main(["--stage", "all", "--resume", *smoke_args(smoke_run)])
    assert code == 0
    out = capsys.readouterr().out
    assert all(f"[{stage}] already finished" in out for stage in train.ALL_ORDER)


def test_sample_without_realignment(smoke_run):
    code = train.main(["--stage", "sample", "--no-realign", "--text", "a person jumps", "--num", "2",
                       "--length", "60", *smoke_args(smoke_run)])
    assert code == 0
    out = latest_user_samples(smoke_run)
    assert np.load(out / "00_a_person_jumps_1_joints.npy").shape == (60, 22, 3)
    assert json.loads((out / "sample.json").read_text())["realigned"] is False  # its own record
    record = json.loads((out / "sample.json").read_text())
    on_disk = sorted(str(p) for p in out.iterdir() if p.name != "sample.json")
    assert sorted(record["files"]) == on_disk, "sample.json names every file written (features too)"


def test_sample_from_lamp_t2m(smoke_run):
    """--generator lamp_t2m: LaMP-T2M's motions, lengths cut to whole motion tokens (4 frames)."""
    code = train.main(["--stage", "sample", "--generator", "lamp_t2m", "--text", "a person jumps", "--length", "62",
                       *smoke_args(smoke_run)])
    assert code == 0
    out = latest_user_samples(smoke_run)
    assert np.load(out / "00_a_person_jumps_0_joints.npy").shape == (60, 22, 3)
    record = json.loads((out / "sample.json").read_text())
    assert record["generator"] == "lamp_t2m" and record["prompts"] == [["a person jumps", 60]]
    assert train.main(["--stage", "sample", "--generator", "lamp_t2m", "--sampler", "lcm", "--text", "a person jumps",
                       *smoke_args(smoke_run)]) == 2


def test_caption_a_sample_folder_and_a_joints_file(smoke_run, capsys):
    """--stage caption: LaMP-M2T describes each motion of a sample folder and a (T, 22, 3) joints file;
    each call its own record."""
    samples = smoke_run / "run" / "samples"
    joints = next(samples.glob("*_joints.npy"))
    assert train.main(["--stage", "caption", "--motion", str(samples), "--motion", str(joints),
                       *smoke_args(smoke_run)]) == 0
    record = json.loads((smoke_run / "run" / "captions.json").read_text())["captions"]
    assert len(record) == len(list(samples.glob("*_features.npy"))) + 1
    assert all(isinstance(c, str) for c in record.values()) and "[caption]" in capsys.readouterr().out
    assert train.main(["--stage", "caption", *smoke_args(smoke_run)]) == 2
    assert "--motion FILE" in capsys.readouterr().err


def test_concurrent_samples_on_one_folder_keep_every_result(smoke_run):
    """Three real `--stage sample` processes started together: three RUN_ID folders, each with
    its own record and motion (they used to share one folder, and all but one result was lost)."""
    root = Path(__file__).resolve().parents[1]
    before = set((smoke_run / "run" / "samples").iterdir())
    calls = [subprocess.Popen([sys.executable, str(root / "train.py"), "--stage", "sample", "--text", f"a person kicks {i}",
                               "--length", "40", *smoke_args(smoke_run)], cwd=root, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(3)]
    for call in calls:
        assert call.wait(timeout=300) == 0, call.stderr.read()
    folders = sorted(set((smoke_run / "run" / "samples").iterdir()) - before)
    assert len(folders) == 3
    texts = sorted(json.loads((f / "sample.json").read_text())["prompts"][0][0] for f in folders)
    assert texts == [f"a person kicks {i}" for i in range(3)]


def test_a_prompt_longer_than_the_encoder_reads_is_refused(smoke_run, capsys):
    long = "a person walks forward and then " * 40
    assert train.main(["--stage", "sample", "--text", long, *smoke_args(smoke_run)]) == 2
    err = capsys.readouterr().err
    assert "--text / --prompts is" in err and "tokens long, more than the text encoder's 77" in err


def latest_user_samples(smoke_run):
    """samples/RUN_ID/ of the last --stage sample call with the user's prompts."""
    return max((p for p in (smoke_run / "run" / "samples").iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime_ns)


def test_missing_checkpoint_names_the_stage(smoke_run, tmp_path, capsys):
    args = smoke_args(smoke_run)
    args[args.index("--out") + 1] = str(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "text_encoder").symlink_to(smoke_run / "run" / "text_encoder")
    assert train.main(["--stage", "diffusion", *args]) == 2
    assert "--stage vae" in capsys.readouterr().err

def test_lamp_condition_and_evaluator(smoke_run):
    """--stage lamp wrote its table; --text-encoder lamp trains and scores LEAD on LaMP features
    beside the CLIP models; --evaluator lamp adds the LaMP-evaluator table (LaMP Tab. 2)."""
    run = smoke_run / "run"
    results = json.loads((run / "results.json").read_text())
    models = [*(row for row, _ in train.LAMP_ABLATIONS.values()), "LaMP"]  # --ablations: LaMP Tab. 5's rows
    assert "Tab. 5 rows" in results["lamp_retrieval"]["note"]
    assert list(results["lamp_retrieval"]["rows"]) == [
        f"{m}, {p}" for p in ("whole split", "batches of 32")
        for m in (*(f"{model} ({s})" for model in models for s in ("best query", "mean of queries")), "evaluator")]
    for stage in ("diffusion", "projector", "atm", "eval", "sample"):
        assert train.main(["--stage", stage, "--text-encoder", "lamp", *smoke_args(smoke_run)]) == 0
    assert train.main(["--stage", "eval", "--evaluator", "lamp", *smoke_args(smoke_run)]) == 0
    assert train.main(["--stage", "inversion", "--text-encoder", "lamp", *smoke_args(smoke_run)]) == 2
    assert loop.load_checkpoint(run / "diffusion_lamp.pt", "diffusion")["meta"]["text_dim"] == 16  # lamp.hidden_size
    assert loop.load_checkpoint(run / "diffusion.pt", "diffusion")["meta"]["text_dim"] == 32       # CLIP's
    assert all((run / f).exists() for f in ("projector_lamp.pt", "diffusion_atm_lamp.pt", "diffusion_lamp.json"))
    assert any((run / "samples_lamp").iterdir())
    results = json.loads((run / "results.json").read_text())
    assert {"t2m", "t2m_lamp", "t2m_lamp_evaluator"} <= set(results)
    assert "LEAD+ATM" in results["t2m_lamp"]["rows"]
    assert list(results["t2m_lamp_evaluator"]["rows"])[:3] == ["Real", "MLD", "LEAD"]


def test_sample_from_a_prompt_file_with_bvh_and_few_steps(smoke_run, tmp_path, capsys):
    """--prompts: a length each (frames or seconds); --bvh writes NAME.bvh beside the joints;
    --sampler lcm --steps 2 samples with the distilled model; a bad line is named with its number."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a person walks forward#64\n\na person jumps#3s\n")
    assert train.main(["--stage", "sample", "--prompts", str(prompts), "--bvh", "--sampler", "lcm",
                       "--steps", "2", *smoke_args(smoke_run)]) == 0
    out = latest_user_samples(smoke_run)
    assert np.load(out / "00_a_person_walks_forward_0_joints.npy").shape == (64, 22, 3)
    assert np.load(out / "01_a_person_jumps_0_joints.npy").shape == (60, 22, 3)  # 3 s at 20 fps
    text = (out / "00_a_person_walks_forward_0.bvh").read_text()
    assert text.startswith("HIERARCHY") and "Frames: 64" in text and "Frame Time: 0.05" in text
    prompts.write_text("a person walks forward#64\na person jumps#900\n")
    assert train.main(["--stage", "sample", "--prompts", str(prompts), *smoke_args(smoke_run)]) == 2
    assert f"{prompts}:2" in capsys.readouterr().err


def test_data_from_your_own_joints(tmp_path, capsys):
    """--stage data --from-joints DIR --data OUT writes the layout, names the bad clips it skipped,
    and the run goes on with the converted dataset (summary, offline text encoder)."""
    from test_ingest import write_source
    write_source(tmp_path / "mine")
    args = ["--stage", "data", "--from-joints", str(tmp_path / "mine"), "--data", str(tmp_path / "dataset"),
            "--out", str(tmp_path / "run"), "--device", "cpu",
            "--set", "text.num_layers=1", "--set", "text.hidden_size=32", "--set", "text.intermediate_size=64",
            "--set", "text.projection_dim=32", "--set", "text.pretrain_steps=2", "--set", "text.pretrain_batch=2"]
    assert train.main(args) == 0
    out = capsys.readouterr().out
    assert "[data] skipped nan: " in out and "kept 4 of" in out
    assert (tmp_path / "dataset" / "Mean.npy").exists() and (tmp_path / "run" / "text_encoder").is_dir()
    assert train.main(args[:2] + ["--from-joints", str(tmp_path / "mine"), "--out", str(tmp_path / "run")]) == 2
    assert "--from-joints DIR needs --data OUT" in capsys.readouterr().err


def test_data_and_inversion_from_motion_capture(smoke_run, tmp_path, capsys):
    """BVH in (issue 30): `--stage data --from-bvh DIR` turns Mixamo-named 60 fps BVH files with
    captions into a dataset; `--stage inversion --motion FILE.bvh` learns a word from one, and
    each call's record is its own (claimed, never overwritten)."""
    import bvh
    test = runfolder.open_run(smoke_run / "run", data_root=smoke_run / "synthetic", preset="tiny", sets=SMOKE)
    clips = runfolder.open_split(test, "test")
    mocap = tmp_path / "mocap"
    mocap.mkdir()
    for i in range(10):
        joints = np.load(smoke_run / "synthetic" / "new_joints" / f"{clips.items[i][0]}.npy")  # (T, 22, 3), 20 fps
        bvh.write_bvh(bvh.resample(joints, 20, 60), mocap / f"clip{i}.bvh", fps=60)
        (mocap / f"clip{i}.txt").write_text(f"{clips.items[i][2][0]}#0.0#0.0\n")
    args = ["--out", str(tmp_path / "run"), "--device", "cpu", *[x for s in SMOKE for x in ("--set", s)]]
    assert train.main(["--stage", "data", "--from-bvh", str(mocap), "--data", str(tmp_path / "dataset"), *args]) == 0
    assert "kept 10 of 10" in capsys.readouterr().out and (tmp_path / "dataset" / "Mean.npy").exists()
    word = ["--stage", "inversion", "--motion", str(mocap / "clip0.bvh"), "--word", "mocap", "--init", "walk",
            *smoke_args(smoke_run)]
    assert train.main(word) == 0 and train.main(word) == 0
    assert (smoke_run / "run" / "tokens" / "mocap.pt").exists()
    records = sorted(p.name for p in (smoke_run / "run").glob("inversion_mocap*.json"))
    assert records == ["inversion_mocap-2.json", "inversion_mocap.json"]


class LightningHyperParameters:
    """Stands for the OmegaConf objects a Lightning .ckpt keeps beside its weights."""

    def __init__(self):
        self.cfg = {"model": "mld"}


def test_import_mlds_released_checkpoint(tmp_path, capsys):
    """--stage import reads an MLD-1 Lightning checkpoint (random weights in MLD's key layout, plus
    a hyper-parameter object, which is never constructed) into vae.pt and diffusion.pt that the
    later stages load; the text width is checked against --clip's."""
    from test_diffusion import mld_denoiser_state_dict
    from test_vae import mld_vae_state_dict
    sd = {**{f"vae.{k}": v for k, v in mld_vae_state_dict(n_layers=3, ff=64).items()},
          **{f"denoiser.{k}": v for k, v in mld_denoiser_state_dict(n_layers=3, ff=64).items()},
          "text_encoder.text_model.embeddings.position_ids": torch.arange(77)}
    ckpt = tmp_path / "mld.ckpt"
    torch.save({"state_dict": sd, "hyper_parameters": LightningHyperParameters(), "epoch": 2999}, ckpt)
    out = tmp_path / "run"
    assert train.main(["--stage", "import", "--mld", str(ckpt), "--out", str(out), "--device", "cpu"]) == 0
    assert "--clip" in capsys.readouterr().out
    run = runfolder.Run(cfg=config.build_config("paper", []), out=out, data_root=tmp_path, synthetic=False,
                    device=torch.device("cpu"), clip=None, resume=False, args=None)
    motion_vae, denoiser = runfolder.load_model(run, "vae"), runfolder.load_model(run, "diffusion")
    assert motion_vae.latent_shape == (1, 256) and denoiser.text_dim == 768
    assert torch.equal(motion_vae.dist_tokens, sd["vae.global_motion_token"])
    assert torch.equal(denoiser.pos, sd["denoiser.query_pos.pe"][:3, 0])
    (tmp_path / "broken.ckpt").write_bytes(b"not a checkpoint")
    assert train.main(["--stage", "import", "--mld", str(tmp_path / "broken.ckpt"), "--out", str(out)]) == 2
    assert "broken.ckpt" in capsys.readouterr().err


def test_eval_in_guo_et_als_evaluator_space(smoke_run, tmp_path):
    """--evaluator t2m loads the official files (here random weights in MLD's deps/ layout) and
    scores the rows on the captions' word/POS tokens, in a section of its own."""
    from test_t2m_evaluator import write_official
    write_official(tmp_path)
    run = tmp_path / "run"  # the LEAD recipe's files alone (the companions' rows would only cost time here)
    run.mkdir()
    for name in ("text_encoder", "vae.pt", "diffusion.pt", "projector.pt", *(f"{n}.pt" for n in train.PROJECTOR_ABLATIONS)):
        (run / name).symlink_to(smoke_run / "run" / name)
    args = smoke_args(smoke_run)
    args[args.index("--out") + 1] = str(run)
    assert train.main(["--stage", "eval", "--ablations", "--evaluator", "t2m", "--t2m-dir", str(tmp_path / "t2m"),
                       "--glove-dir", str(tmp_path / "glove"), *args]) == 0
    results = json.loads((run / "results.json").read_text())
    rows = results["t2m_t2m_evaluator"]["rows"]
    assert list(rows)[:3] == ["Real", "MLD", "LEAD"] and 0.0 <= rows["LEAD"]["R-precision top-1"][0] <= 1.0
    assert "Guo et al.'s released" in results["t2m_t2m_evaluator"]["note"]
    assert list(results["t2m_t2m_evaluator_fit"]["rows"]) == list(rows)  # the training captions' own tags
    assert (run / "eval_t2m_evaluator.json").exists()


def test_the_readme_snippet_generates_a_motion(smoke_run):
    """README.md's "use the modules directly" block, run as written on this run folder."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("**Use the modules directly**", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert 'runfolder.open_run("runs/default")' in code
    code = code.replace('runfolder.open_run("runs/default")',
                        f'runfolder.open_run({str(smoke_run / "run")!r}, data_root={str(smoke_run / "synthetic")!r})')
    scope = {}
    exec(code, scope)
    assert scope["motion"].shape == (1, 120, 263) and scope["joints"].shape == (120, 22, 3)
    assert torch.isfinite(scope["joints"]).all()
