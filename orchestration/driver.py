"""The sweep's driver: set up once, then run the phases in order, each a unit recorded in `sweep.json`.

    setup: resume target, data check, Ray (+ the resource plan checked against its nodes), estimator,
           evaluation actors, MLflow parent run
    phases: references/real, then per family: [vae ->] reference -> grid -> final -> cfg [-> samplers]
    summary: the study's tables from the phases' recorded results

A done phase is skipped on `--resume` (its recorded result stands in); a phase cut short is continued
(Tune phases with Tuner.restore; the final phase restores its finished training and reuses its model version;
the sampling phases read back the steps MLflow has and sample only the others). The sweep itself is marked done
last, once every run is closed and the report written: a driver killed anywhere before leaves a sweep that
`--resume` finishes. MLflow is written only here (python -m orchestration.crash_points kills it at each write).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from data.catalogue import FAMILY_INFO, TAG_PREFIX, default_tracking_uri, text_conditioned
from data.cli import first_line
from orchestration.config import SweepConfig
from orchestration.errors import SweepError
from orchestration.faults import reached
from orchestration.grid import TrialSpec, trial_table
from orchestration.resources import ResourcePlan, plan_resources
from orchestration.state import SweepState
from orchestration.tracking.checks import mlflow_ui_command, mlflow_ui_link
from orchestration.tracking.client import Tracker

# Settings that may differ when a sweep is resumed (where it runs, not what it computes).
RUNTIME_FIELDS = ("address", "local_cpus", "gpus_per_trial", "max_concurrent", "resume", "dry_run",
                  "gpus_per_eval_actor", "eval_actors", "cpus_per_trial", "final_workers")
# Runtime settings that pick the training code: the sweep's own value unless the command names one
TRAINING_PATH_FIELDS = ("final_workers",)


def _terminate(signum, frame):
    raise KeyboardInterrupt


def start_ray(cfg: SweepConfig, dashboard: bool) -> dict[str, Any]:
    import ray

    if ray.is_initialized():
        ctx = None
    elif cfg.address and os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        # a Ray job (`ray job submit --working-dir .`): the job's working_dir already ships the packages, and a
        # runtime_env of our own would replace it (Ray then deletes the job's working copy, our cwd)
        ctx = ray.init(address=cfg.address, log_to_driver=True)
    elif cfg.address:
        root = Path(__file__).resolve().parent.parent
        modules = [str(root / m) for m in ("data", "models", "evaluation", "orchestration")]
        # the driver's OpenMP spin count, where its environment sets one (docs/measurements.md, "Threads beside
        # other processes"), reaches the cluster's workers too (a local runtime's inherit it)
        env_vars = {k: os.environ[k] for k in ("GOMP_SPINCOUNT",) if k in os.environ}
        ctx = ray.init(address=cfg.address, runtime_env={"py_modules": modules, "env_vars": env_vars},
                       log_to_driver=True)
    else:  # a runtime of our own, never one that `ray start` left running on this machine
        from orchestration.ray_token import private_local_token

        private_local_token()  # before Ray writes the token with the process's umask
        ctx = ray.init(address="local", num_cpus=cfg.local_cpus, include_dashboard=dashboard,
                       dashboard_host="127.0.0.1", log_to_driver=True)
    if threading.current_thread() is threading.main_thread():
        # ray.init installs its own SIGTERM handler (which aborts); end the sweep like Ctrl-C instead, so every
        # MLflow run gets closed and --resume can continue
        signal.signal(signal.SIGTERM, _terminate)
    return {"dashboard_url": getattr(ctx, "dashboard_url", None) if ctx is not None else None,
            "local": not cfg.address}


def _family_tags(cfg: SweepConfig) -> dict[str, str]:
    return {f"{TAG_PREFIX}family": cfg.model, f"{TAG_PREFIX}preset": cfg.preset, f"{TAG_PREFIX}data": cfg.data}


def resume_config(cfg: SweepConfig, resume_from: str | None, explicit: set[str]) -> tuple[SweepConfig, SweepState]:
    """The stored sweep's config with this command's runtime settings; says which other flags it ignores."""
    state = SweepState.find(cfg, resume_from)
    keep = {k: getattr(cfg, k) for k in RUNTIME_FIELDS if getattr(cfg, k) is not None
            and (k in explicit or k not in TRAINING_PATH_FIELDS)}
    ignored = sorted(k for k in explicit - set(RUNTIME_FIELDS)
                     if k in {f.name for f in dataclasses.fields(SweepConfig)} | {"preset"}
                     and getattr(cfg, k, None) != getattr(state.config, k, None))
    if ignored:
        print("--resume keeps the sweep's own settings; ignored: " + ", ".join(
            f"--{k.replace('_', '-')} {getattr(cfg, k)} (the sweep has {getattr(state.config, k)})" for k in ignored),
            flush=True)
    for k in TRAINING_PATH_FIELDS:
        if k not in explicit and getattr(cfg, k) != getattr(state.config, k):
            print(f"--resume keeps --{k.replace('_', '-')} {getattr(state.config, k)}: the sweep's own (name the "
                  "flag to change it)", flush=True)
    merged = dataclasses.replace(state.config, **keep)
    state.keep_training_path(merged)
    return merged, state


def check_data(cfg: SweepConfig) -> str:
    from data.cache import FaceCache
    from data.dataset import resolve_data

    print(f"data: {cfg.data} at {cfg.image_size}px", flush=True)
    data_root = str(resolve_data(cfg.data, cfg.image_size))
    cache = FaceCache.open(data_root)
    size = cache.size
    captions = cache.manifest.get("captions")
    text = [f for f in cfg.families if text_conditioned(f)]
    if isinstance(captions, dict) and text:  # the text families train on these
        if captions.get("waived"):
            print(f"data: captions waived (data.prepare --no-captions): {', '.join(text)} train(s) on empty captions",
                  flush=True)
        else:
            print(f"data: {captions.get('non_empty', 0):,} of {captions.get('images', 0):,} images have a non-empty "
                  f"caption (from {captions.get('source')})", flush=True)
    if size != cfg.image_size:
        raise SweepError(f"the data at {data_root} is {size}px but preset {cfg.preset} trains at {cfg.image_size}px: "
                         f"pass a {cfg.image_size}px cache (data.prepare --size {cfg.image_size}) or another --preset")
    return data_root


def base_tags(cfg: SweepConfig) -> dict[str, str]:
    """A family built on pretrained weights (sd-lora's base, pixel-text's text encoder): which, as a tag of every
    run (the trial table printed before says it, and how to use the real one where it is a tiny stand-in)."""
    from models.families import family_spec
    from orchestration.grid import grid_trials
    from orchestration.trainable import model_config

    spec = family_spec(cfg.model)
    if spec.base is None:
        return {}
    return {f"{TAG_PREFIX}base": spec.base(model_config(cfg, grid_trials(cfg)[0]))}


def build_offline_bases(cfg: SweepConfig, resources: dict[str, float]) -> None:
    """Each family's tiny offline base, where its config falls back to one, built once before any phase needs it,
    in a Ray task holding `resources` (the node's: not one trial's CPU while the others wait); cached afterwards."""
    from models.families import family_spec
    from orchestration.evaluate import in_task, offline_base_task
    from orchestration.grid import grid_trials
    from orchestration.trainable import model_config

    for family in cfg.families:
        fam = cfg.for_family(family)
        config = model_config(fam, grid_trials(fam)[0])
        if family_spec(fam.model).offline_base is None or getattr(config, "pretrained", None) is not None:
            continue
        print(f"{family}: its tiny offline base built once if not cached (a Ray task holding {resources['cpu']:g} "
              f"CPU)", flush=True)
        path = in_task(offline_base_task, resources, model=fam.model, config=config)
        print(f"{family}: tiny offline base at {path}", flush=True)


@dataclasses.dataclass
class Sweep:
    """What every phase of one sweep shares."""

    cfg: SweepConfig
    state: SweepState
    tracker: Tracker
    parent: str
    data_root: str
    eval_config: Any
    pool: Any
    plan: ResourcePlan

    def phase(self, name: str, body, *args, **kwargs) -> Any:
        """Run `body(continuing, *args, **kwargs)` as the unit `name`, or return its recorded result when done."""
        if self.state.status(name) == "done":
            print(f"[{name}] done in an earlier run of this sweep: skipped", flush=True)
            return self.state.result(name)
        continuing = self.state.start(name)
        if continuing:
            print(f"[{name}] cut short in an earlier run: continuing", flush=True)
        reached(name)
        result = body(continuing, *args, **kwargs)
        self.state.done(name, result)
        return result


def run_family(sweep: Sweep, family: str, tags: dict[str, str]) -> dict[str, Any]:
    """One family's phases in order: [vae (--tune-vae, sd-lora) ->] reference -> grid -> final -> cfg [-> samplers]
    [-> superres]."""
    from orchestration.phases.grid import grid_phase
    from orchestration.phases.references import family_reference

    cfg = sweep.cfg.for_family(family)
    out: dict[str, Any] = {"family": family}
    if cfg.tune_vae and family == "sd-lora":  # before the reference row: the base without LoRA uses the tuned VAE too
        from orchestration.phases.vae import vae_phase

        out["vae"] = sweep.phase(f"{family}/vae", vae_phase, sweep, cfg, tags)
        cfg = dataclasses.replace(cfg, vae=out["vae"]["vae_dir"])
    out["reference"] = sweep.phase(f"{family}/reference", family_reference, sweep, cfg, tags)
    out["grid"] = sweep.phase(f"{family}/grid", grid_phase, sweep, cfg, tags)
    best = TrialSpec.from_params(out["grid"]["best"]).resolved(cfg)
    print(f"\n{family}: best configuration by {out['grid']['metric']}: {out['grid']['best_label']}", flush=True)
    if cfg.final_epochs > 0:
        from orchestration.phases.final import run_final
        from orchestration.phases.guidance import run_cfg_sweep

        out["final"] = sweep.phase(f"{family}/final", run_final, sweep, cfg, best, tags, out["grid"]["metric"])
        out["cfg"] = sweep.phase(f"{family}/cfg", run_cfg_sweep, sweep, cfg, out["final"], tags)
        if cfg.sampler_phase:
            from orchestration.phases.samplers import run_sampler_phase

            out["samplers"] = sweep.phase(f"{family}/samplers", run_sampler_phase, sweep, cfg, out["final"], tags)
        if cfg.superres:
            from orchestration.phases.superres import run_superres

            out["superres"] = sweep.phase(f"{family}/superres", run_superres, sweep, cfg, out["final"], tags)
    return out


def summary(sweep, families: dict[str, dict], real: dict) -> str:
    """Table 3.1 (every reference row) and Table 4.4 (the final models beside the reference rows)."""
    from orchestration.report.tables import reference_label
    from orchestration.summary import cfg_table, final_table, sampler_table, seed_values

    cfg = sweep.cfg
    blocks = []
    refs = {reference_label("untrained", f): r["reference"] for f, r in families.items()}
    refs.update(real)
    blocks.append(final_table({}, {}, refs, "Reference rows (the study's Table 3.1 layout), "
                                            f"{cfg.final_samples} samples"))
    finals = {f"{f} (final)": seed_values(r["final"]) for f, r in families.items() if r.get("final")}
    if finals:
        unavailable: dict[str, str] = {}
        for r in families.values():
            if r.get("final"):
                unavailable.update(r["final"]["unavailable"])
        labels = ", ".join(f"{f}: {r['final']['label']} x {cfg.final_epochs} epochs at guidance "
                           f"{r['final']['guidance_scale']:g}" for f, r in families.items() if r.get("final"))
        if cfg.final_seeds > 1:
            labels += f"; {cfg.final_seeds} seeds each, spread = max - min, seed {cfg.seed}'s model registered"
        blocks.append(final_table(finals, unavailable, refs, f"Final models ({labels}; {cfg.final_samples} samples; "
                                                             "the study's Table 4.4 layout)"))
    for f, r in families.items():
        if r.get("vae"):
            from orchestration.phases.vae import vae_line

            blocks.append(vae_line(f, r["vae"]))
        fin = r.get("final")
        seeds = len(seed_values(fin)) if fin else 0
        acc = (fin.get("over_seeds", {}).get("mean") or fin["values"]).get("est_acc_balanced") if fin else None
        ref = r["reference"].get("est_acc_balanced")
        if acc is not None and ref:
            against = FAMILY_INFO[f].untrained
            blocks.append(f"{f} conditioning: class-balanced estimator accuracy {acc:.1%} on generated images"
                          f"{f' (mean of {seeds} seeds)' if seeds > 1 else ''} vs {ref:.1%} for {against} "
                          f"({acc / ref:.1f}x; chance is {1 / 6:.1%})")
        if r.get("cfg"):
            c = r["cfg"]
            blocks.append(f"{f} CFG sweep ({cfg.cfg_samples} samples per scale; * = on the Pareto front; plot "
                          f"{c['png']}):\n" + cfg_table(c["rows"], c["quality_metric"], c["front"]))
        if r.get("samplers"):
            blocks.append(f"{f} samplers ({cfg.sampler_samples} samples each; plot {r['samplers']['png']}):\n"
                          + sampler_table(r["samplers"]["rows"], r["samplers"]["quality_metric"]))
    return "\n\n".join(blocks)


def _open_parent(cfg: SweepConfig, state: SweepState, data_root: str, estimator, family_tags: dict[str, dict[str, str]]
                 ) -> tuple[Tracker, str]:
    """The sweep's parent run (reopened when resumed), with its params, dataset, estimator and provenance."""
    from orchestration.provenance import provenance_tags

    tracker = Tracker(state.tracking_uri, cfg.experiment_name)
    tags = {f"{TAG_PREFIX}family": cfg.model, f"{TAG_PREFIX}preset": cfg.preset, f"{TAG_PREFIX}data": cfg.data}
    bases = {f: extra[f"{TAG_PREFIX}base"] for f, extra in family_tags.items() if f"{TAG_PREFIX}base" in extra}
    if len(cfg.families) == 1:
        tags.update({f"{TAG_PREFIX}base": base for base in bases.values()})
    else:  # a joint sweep's parent names each family's base
        tags.update({f"{TAG_PREFIX}base.{f}": base for f, base in bases.items()})
    parent = tracker.open_run(f"sweep/{state.root.name}", state.root.name,
                              tags={**tags, f"{TAG_PREFIX}phase": "sweep", f"{TAG_PREFIX}storage": str(state.root)},
                              params=cfg.params())
    tracker.log_dataset(parent, data_root)  # the training data as a dataset input; every nested run inherits it
    tracker.log_estimator(parent, estimator)
    state.parent_run_id = parent
    state.save()
    print(f"MLflow: {mlflow_ui_command(state.tracking_uri)}, then {mlflow_ui_link(tracker.experiment_id)}",
          flush=True)
    tracker.set_tags(parent, provenance_tags(data_root, cfg.seed, tracker.client.get_run(parent).data.tags))
    return tracker, parent


def run_sweep(cfg: SweepConfig, dashboard: bool = True, resume_from: str | None = None,
              explicit: set[str] | None = None) -> dict[str, Any]:
    """Run (or resume) a whole sweep, one family or the whole study. Returns what the summary shows."""
    from evaluation.actors import EvaluatorPool
    from evaluation.config import EvalConfig
    from orchestration.evaluate import estimator_task, in_task
    from orchestration.phases.guidance import joint_pareto
    from orchestration.phases.references import real_references

    started = time.time()
    state = None
    if cfg.resume:
        cfg, state = resume_config(cfg, resume_from, explicit or set())
        print(f"resuming sweep {state.root}", flush=True)
    print(trial_table(cfg), flush=True)
    data_root = check_data(cfg)
    family_tags = {f: {**_family_tags(cfg.for_family(f)), **base_tags(cfg.for_family(f))} for f in cfg.families}
    if state is None:
        state = SweepState.create(cfg, cfg.tracking_uri or default_tracking_uri())

    cluster = start_ray(cfg, dashboard)
    plan = plan_resources(cfg)
    print(plan.describe(), flush=True)
    if cluster["dashboard_url"]:
        print(f"Ray dashboard: http://{cluster['dashboard_url']} (token: `ray get-auth-token`)", flush=True)
    print(f"attribute estimator (preset {cfg.estimator_preset}): trained once (a Ray task holding "
          f"{plan.lone['cpu']:g} CPU, {plan.lone['gpu']:g} GPU), then cached", flush=True)
    estimator = Path(in_task(estimator_task, plan.lone, data_root=str(data_root), preset=cfg.estimator_preset)["path"])
    build_offline_bases(cfg, plan.lone)
    eval_config = EvalConfig(estimator=str(estimator), inception_weights=cfg.inception_weights,
                             clip_model=cfg.clip_model, mtcnn=cfg.mtcnn, device="auto")
    # no CPU reservation: the actors score while the trial that called them waits, so they never block a trial
    pool = EvaluatorPool(eval_config, num_actors=cfg.eval_actors, gpus_per_actor=cfg.gpus_per_eval_actor,
                         cpus_per_actor=0)

    tracker, parent = _open_parent(cfg, state, data_root, estimator, family_tags)
    sweep = Sweep(cfg, state, tracker, parent, data_root, eval_config, pool, plan)
    out: dict[str, Any] = {"state": state, "parent_run_id": parent, "tracking_uri": state.tracking_uri,
                           "families": {}}
    ok, reason = False, None
    try:
        real = sweep.phase("references/real", real_references, sweep)
        for family in cfg.families:
            out["families"][family] = run_family(sweep, family, family_tags[family])
        if cfg.joint and cfg.final_epochs > 0:
            out["joint_pareto"] = joint_pareto(sweep, out["families"])
        print("\n" + summary(sweep, out["families"], real), flush=True)
        reached("sweep/closing")
        tracker.log_once(parent, {"wall_seconds": time.time() - started})  # the first run's, when resumed
        ok = True
    except KeyboardInterrupt:
        reason = "interrupted: continue with --resume"
        raise
    except BaseException as err:
        reason = f"{type(err).__name__}: {first_line(str(err))}"
        raise
    finally:
        _close_children(tracker, parent, None if ok else reason or "the sweep ended before this run finished")
        tracker.finish(parent, ok=ok, reason=reason)
        pool.shutdown()
    write_report(tracker, parent, state.root / "report")
    # only now, with every run closed and the report written: a kill before this line leaves a sweep to --resume
    state.done("sweep", True)
    from orchestration.summary import where_to_look

    models = {f: r["final"]["model_uri"] for f, r in out["families"].items() if r.get("final")}
    print("\n" + where_to_look(mlflow_ui_command(state.tracking_uri), cfg.experiment_name, parent, str(state.root),
                               cluster["dashboard_url"], models, cluster["local"]))
    print(f"  MLflow runs:    {mlflow_ui_link(tracker.experiment_id)} (this experiment's runs, directly)", flush=True)
    return out


def _close_children(tracker: Tracker, parent: str, reason: str | None) -> None:
    """No child is left RUNNING: a sweep that ends early closes those still open FAILED (with the reason). On
    success, a child still RUNNING is one whose phase finished while a killed driver never closed it (its
    record is complete: the phase is done): it is closed FINISHED."""
    for run in tracker.children(parent):
        if run.info.status == "RUNNING":
            tracker.finish(run.info.run_id, ok=reason is None, reason=reason)


def write_report(tracker: Tracker, parent: str, out: Path) -> None:
    """The study's tables and figures from the MLflow record; a finished sweep never fails here."""
    try:
        from orchestration.report.build import report_sweep

        report = report_sweep(tracker, parent, out)
        print(f"\nreport: {report / 'report.html'} (+ report.md; also the parent run's report/ artifacts)", flush=True)
    except Exception as err:
        print(f"\nreport: not written ({type(err).__name__}: {first_line(str(err))})"
              "; write it later with python -m orchestration.report", flush=True)


__all__ = ["run_sweep", "start_ray", "resume_config", "Sweep"]
