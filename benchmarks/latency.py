"""Latency of atlas generation per stage, as ``diffdef-run`` does it, against the paper's ~24.6 s per atlas.

    python benchmarks/latency.py --bundle runs/default/bundle --steps 20 --repeats 3
    python benchmarks/latency.py --bundle runs/default/bundle --backend torch
    # paper-sized model without training (random weights: the timing is the same as trained weights):
    python benchmarks/latency.py --untrained paper --grid paper --work-dir /tmp/lat --steps 20

Stages (seconds, mean over ``--repeats`` runs after one warm-up, all ages in one batch): one denoiser call
(engine time only), the whole denoising loop (calls + scheduler), the DVF decoder, the warp, the Jacobian,
writing the files (NIfTIs, PNG, JSON), and the total. "per atlas" divides the total by the number of ages.
The paper reports ~24.6 s per atlas with 500 DDPM steps on an A100 (Starck et al., TMI 2026, table of
reported figures in DESIGN.md); the speed-up compares per-atlas totals, so it mixes fewer steps and a
different device: both are printed beside it.
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import click

PAPER_SECONDS_PER_ATLAS = 24.6
PAPER_STEPS = 500
PAPER_DEVICE = "NVIDIA A100"


class TimedEngines:
    """Wraps an ``Engines`` and records the wall time of every denoiser call."""

    def __init__(self, inner):
        self.inner, self.name, self.denoise_s = inner, inner.name, []

    def denoise(self, *args):
        tic = time.perf_counter()
        out = self.inner.denoise(*args)
        self.denoise_s.append(time.perf_counter() - tic)
        return out

    def decode_dvf(self, latents):
        return self.inner.decode_dvf(latents)

    def warp(self, image, dvf):
        return self.inner.warp(image, dvf)


def default_conditions(spec, ages: list[float]) -> dict:
    """``ages`` plus every other condition of the model at a fixed, in-range value (sex F, others mid-range)."""
    values: dict = {"age": ages}
    for name in spec.names:
        if name == "sex":
            values[name] = 0.0
        elif name != "age":
            lo, hi = spec.trained[name]
            values[name] = (lo + hi) / 2
    return values


def run_once(model, conditions: dict, steps: int, samples: int, seed: int, out_dir: Path,
             outputs: tuple[str, ...] | None = None, compress: bool = True) -> dict[str, float]:
    """One ``diffdef-run``-equivalent generation + write (``outputs``, ``compress`` as ``diffdef-run --outputs``,
    ``--no-compress``; None = every output); returns stage -> seconds (whole batch)."""
    from diffdef_runtime.outputs import OUTPUTS
    from diffdef_runtime.outputs import write_result
    from diffdef_runtime.pipeline import generate

    engines = TimedEngines(model.engines)
    tic = time.perf_counter()
    results = generate(engines, model.info, model.template, conditions, steps=steps, seed=seed, samples=samples)
    tic_write = time.perf_counter()
    for result in results:
        write_result(result, model.affine, out_dir, extra={"source": model.source}, outputs=outputs or OUTPUTS,
                     compress=compress)
    done = time.perf_counter()
    m = len(results)
    batch = {k: v * m for k, v in results[0].timings_s.items()}  # timings_s are per condition
    return {"denoise_step": statistics.mean(engines.denoise_s), "denoise_total": batch["denoise"],
            "decode": batch["decode"], "warp": batch["warp"], "jacobian": batch["jacobian"],
            "write": done - tic_write, "total": done - tic, "per_atlas": (done - tic) / m,
            "per_atlas_no_write": (tic_write - tic) / m}


def make_untrained_bundle(preset: str, grid: str, work_dir: Path, fp16: bool = False) -> Path:
    """Export a bundle of an untrained ``preset`` checkpoint on ``grid`` (reused if already in ``work_dir``)."""
    from diffdef_export.bundle_writer import export_bundle
    from diffdef_export.testing import make_untrained_checkpoint

    bundle = work_dir / f"untrained-{preset}-{grid}{'-fp16' if fp16 else ''}" / "bundle"
    if (bundle / "manifest.json").is_file():
        return bundle
    from diffdef.training.config import preset_config

    ldm = preset_config(preset)["ldm"]  # the preset's DVF decoder: its parts, basis and integration
    checkpoint = make_untrained_checkpoint(bundle.parent / "checkpoint", grid=grid, preset=preset,
                                           parts=ldm["dvf_decoder"], basis_rank=ldm["basis_rank"],
                                           diffeomorphic=ldm["diffeomorphic"],
                                           integration_steps=ldm["integration_steps"],
                                           integration_down=ldm["integration_down"])
    click.echo(f"exporting an untrained {preset} model on the {grid} grid to {bundle} ...", err=True)
    return export_bundle(checkpoint, bundle, fp16=fp16)


def format_table(rows: dict[str, dict[str, float]], steps: int, n_atlases: int) -> str:
    """Stages down, backends across; then the paper and the speed-up."""
    labels = {"denoise_step": "denoise, per step", "denoise_total": f"denoise, {steps} steps", "decode": "decode",
              "warp": "warp", "jacobian": "jacobian", "write": "write files", "total": f"total ({n_atlases} atlases)",
              "per_atlas": "per atlas", "per_atlas_no_write": "per atlas, without writing"}
    names = list(rows)
    width = max(len(v) for v in labels.values()) + 2
    lines = [f"{'stage (s)':<{width}}" + "".join(f"{n:>14}" for n in names)]
    for key, label in labels.items():
        lines.append(f"{label:<{width}}" + "".join(f"{rows[n][key]:>14.4f}" for n in names))
    paper_step = PAPER_SECONDS_PER_ATLAS / PAPER_STEPS
    lines.append(f"{'paper, per atlas':<{width}}" + "".join(f"{PAPER_SECONDS_PER_ATLAS:>14.1f}" for _ in names)
                 + f"   ({PAPER_STEPS} steps, {PAPER_DEVICE})")
    lines.append(f"{'speed-up per atlas':<{width}}"
                 + "".join(f"{PAPER_SECONDS_PER_ATLAS / rows[n]['per_atlas']:>13.1f}x" for n in names)
                 + f"   ({steps} vs {PAPER_STEPS} steps, this machine vs {PAPER_DEVICE})")
    lines.append(f"{'paper, per step':<{width}}" + "".join(f"{paper_step:>14.4f}" for _ in names))
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bundle", type=click.Path(path_type=Path), default=None, help="Exported bundle to time.")
@click.option("--backend", "backends", multiple=True, default=("ort",), show_default=True,
              help="ort, tensorrt or torch, optionally with a device (torch:cuda); repeat to compare, "
                   "e.g. --backend ort --backend torch.")
@click.option("--device", default="cpu", show_default=True, help="Device of backends given without one.")
@click.option("--steps", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--repeats", type=click.IntRange(1, 100), default=3, show_default=True, help="Timed runs after 1 warm-up.")
@click.option("--ages", default="70", show_default=True, help="Ages in one batch: 70, 50,60,70 or 50:80:10.")
@click.option("--samples", type=click.IntRange(1, 256), default=1, show_default=True)
@click.option("--untrained", type=click.Choice(["tiny", "default", "paper"]), default=None,
              help="Time an untrained model of this preset instead of --bundle (needs torch + the exporter).")
@click.option("--grid", default="paper", show_default=True, help="Grid of the --untrained model.")
@click.option("--fp16", is_flag=True, help="Export the --untrained model in fp16.")
@click.option("--work-dir", type=click.Path(path_type=Path), default=None,
              help="Where --untrained bundles are cached [default: a temporary folder].")
@click.option("--outputs", default=None, help="Files written per atlas, as diffdef-run --outputs [default: all].")
@click.option("--compress/--no-compress", default=True, show_default=True, help="As diffdef-run.")
@click.option("--json-out", type=click.Path(path_type=Path), default=None)
def main(bundle, backends, device, steps, repeats, ages, samples, untrained, grid, fp16, work_dir, outputs, compress,
         json_out):
    """Print per-stage wall times of atlas generation for one bundle and one or more backends."""
    from diffdef_runtime.backends import open_model
    from diffdef_runtime.conditions import parse_age_list

    try:
        age_list = parse_age_list(ages)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--ages") from err
    with tempfile.TemporaryDirectory(prefix="diffdef-latency-") as tmp:
        if untrained is not None:
            bundle = make_untrained_bundle(untrained, grid, Path(work_dir or tmp), fp16=fp16)
        elif bundle is None or not (Path(bundle) / "manifest.json").is_file():
            raise click.UsageError(f"bundle not found: {bundle} (give --bundle BUNDLE, or --untrained PRESET)")
        rows: dict[str, dict[str, float]] = {}
        for spec in backends:
            backend, _, backend_device = spec.partition(":")
            backend_device = backend_device or device
            if backend not in ("ort", "tensorrt", "torch"):
                raise click.BadParameter(f"{spec!r}: use ort, tensorrt or torch[:device]", param_hint="--backend")
            try:
                model = open_model(backend, bundle=bundle, device=backend_device)
            except (ValueError, RuntimeError) as err:
                raise click.ClickException(f"{spec}: {err}") from err
            if backend_device != "cpu":
                backend = f"{backend}:{backend_device}"
            conditions = default_conditions(model.info.conditions, age_list)
            runs = []
            for i in range(repeats + 1):  # the first is the warm-up
                out = Path(tmp) / f"{backend}-{i}"
                timing = run_once(model, conditions, steps, samples, seed=i, out_dir=out,
                                  outputs=tuple(outputs.split(",")) if outputs else None, compress=compress)
                if i:
                    runs.append(timing)
                click.echo(f"{backend} {'warm-up' if i == 0 else f'run {i}'}: {timing['total']:.3f} s", err=True)
            rows[backend] = {k: statistics.mean(r[k] for r in runs) for k in runs[0]}
        manifest = json.loads((Path(bundle) / "manifest.json").read_text())
    grid_name = manifest.get("grid", {}).get("name", "?") if isinstance(manifest.get("grid"), dict) else "?"
    click.echo(f"bundle {bundle} (grid {grid_name}, {manifest.get('precision')}), "
               f"{platform.processor() or platform.machine()}; {len(age_list)} ages x {samples} samples, "
               f"{steps} DDIM steps; mean of {repeats} runs after 1 warm-up")
    click.echo(format_table(rows, steps, len(age_list)))
    if json_out is not None:
        json_out.write_text(json.dumps({"bundle": str(bundle), "steps": steps, "ages": age_list,
                                        "samples": samples, "repeats": repeats, "seconds": rows,
                                        "paper_seconds_per_atlas": PAPER_SECONDS_PER_ATLAS}, indent=2) + "\n")


if __name__ == "__main__":
    main()
