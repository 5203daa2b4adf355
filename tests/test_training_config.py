import json

import pytest

from diffdef.training.config import apply_override, config_hash, load_config, preset_config, stage_view


def test_presets_differ_in_grid_and_budget():
    tiny, default, paper = (preset_config(p) for p in ("tiny", "default", "paper"))
    assert (tiny["data"]["grid"], default["data"]["grid"], paper["data"]["grid"]) == ("4mm", "2mm", "paper")
    assert paper["ldm"]["neighbours"] == 15 and paper["ldm"]["latent_scale"] == 0.3
    assert default["schedule"]["prediction_type"] == "v_prediction"
    # the paper's L_morph uses the registration network as is; ours subtracts its identity-pair field
    assert not paper["ldm"]["reg_bias_correction"] and default["ldm"]["reg_bias_correction"]
    # the drawn-latent pre-fit: on in tiny and default (at default's last L_diff step, the final UNet drawing), off
    # in paper; default has no joint phase, paper the paper's
    assert tiny["ldm"]["basis_prefit_samples"] and tiny["ldm"]["joint_steps"]
    assert default["ldm"]["basis_prefit_samples"] == 2 and default["ldm"]["decoder_warmup_steps"] == 0
    assert default["ldm"]["joint_steps"] == 0
    assert paper["ldm"]["joint_steps"] == 50_000
    assert default["seed"] == 1 and default["data"]["synthetic_seed"] == 0  # the cohort stays the same
    assert not paper["ldm"]["basis_prefit_samples"]
    for retired in ("joint_fit_weight", "reg_refine_steps", "warmup_targets", "morph_grad_to_unet"):
        assert retired not in default["ldm"]  # measured no effect (docs/METHOD.md): removed
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("huge")


def test_overrides_parse_json_and_reject_unknown_keys():
    cfg = preset_config("tiny")
    apply_override(cfg, "ldm.joint_steps=7")
    apply_override(cfg, "data.conditions=[\"age\"]")
    apply_override(cfg, "data.source=manifest")
    assert cfg["ldm"]["joint_steps"] == 7 and cfg["data"]["conditions"] == ["age"]
    assert cfg["data"]["source"] == "manifest"
    with pytest.raises(ValueError, match="unknown key 'stepz'"):
        apply_override(cfg, "ldm.stepz=3")
    with pytest.raises(ValueError, match="section.key=value"):
        apply_override(cfg, "ldm.steps")


def test_config_file_merges_and_names_bad_keys(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"ae": {"steps": 11}}))
    cfg = load_config("tiny", good, ["reg.steps=5"])
    assert cfg["ae"]["steps"] == 11 and cfg["reg"]["steps"] == 5 and cfg["ae"]["lr"] == preset_config("tiny")["ae"]["lr"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"ae": {"stepz": 1}}))
    with pytest.raises(ValueError, match="ae.stepz"):
        load_config("tiny", bad, [])
    with pytest.raises(FileNotFoundError):
        load_config("tiny", tmp_path / "missing.json", [])


def test_wrong_types_are_refused_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"'ldm.unet_steps' must be int, got 'abc'"):
        load_config("tiny", None, ["ldm.unet_steps=abc"])
    with pytest.raises(ValueError, match=r"'run.compile' must be bool, got 1"):
        load_config("tiny", None, ["run.compile=1"])
    with pytest.raises(ValueError, match=r"'ae.steps' must be int, got True"):
        load_config("tiny", None, ["ae.steps=true"])
    with pytest.raises(ValueError, match=r"'data.conditions' must be list\[str\], got \[1\]"):
        load_config("tiny", None, ["data.conditions=[1]"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"ldm": {"lr": "fast"}}))
    with pytest.raises(ValueError, match=r"bad.json.*'ldm.lr' must be float"):
        load_config("tiny", bad, [])
    # an int where a float is expected, None where None is allowed, a list of ints for the patch size
    cfg = load_config("tiny", None, ["ldm.lr=1", "ldm.latent_scale=null", "ae.patch_size=[16,16,16]"])
    assert cfg["ldm"]["lr"] == 1 and cfg["ldm"]["latent_scale"] is None and cfg["ae"]["patch_size"] == [16, 16, 16]


def test_section_defaults_are_the_default_preset_and_presets_are_differences():
    from diffdef.training.config import PRESET_CHANGES, SECTIONS, check_config

    default = preset_config("default")
    assert default["ldm"]["dvf_decoder"] == "basis" and default["ldm"]["unet_steps"] == 600 and default["seed"] == 1
    assert PRESET_CHANGES["default"] == {}
    for name in ("tiny", "paper"):
        cfg = preset_config(name)
        check_config(cfg, name)
        changed = {(section, key) for section in SECTIONS for key in cfg[section]
                   if cfg[section][key] != default[section][key]}
        assert changed == {(section, key) for section, keys in PRESET_CHANGES[name].items() if section in SECTIONS
                           for key in keys}  # no listed difference is a no-op
    assert preset_config("tiny")["ldm"]["unet_steps"] == 6 and preset_config("paper")["ldm"]["neighbours"] == 15


def test_stage_hash_ignores_other_stages():
    a = preset_config("tiny")
    b = preset_config("tiny")
    b["ldm"]["joint_steps"] += 1
    assert config_hash(a, "ae") == config_hash(b, "ae")
    assert config_hash(a, "ldm") != config_hash(b, "ldm")
    assert "denoiser" in stage_view(a, "ldm") and "denoiser" not in stage_view(a, "ae")
