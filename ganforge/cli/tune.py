"""``ganforge tune``: search training settings with Optuna; every trial is a run directory."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ganforge.cli.common import DEFAULT_STORAGE, load_registry, parse_options, user_errors


def tune(
    dataset: str = typer.Option(..., help="Dataset to tune on."),
    loss: str = typer.Option(..., help="Loss to tune."),
    arch: Optional[str] = typer.Option(None, help="Architecture (default: the recipes' choice)."),
    trials: int = typer.Option(20, min=1, help="Finished trials the study should have (all workers together)."),
    steps: int = typer.Option(..., min=1, help="Training steps of each trial."),
    metric: str = typer.Option(..., help="The metric to optimise, one --eval-every reports: high_quality or "
                                         "reverse_kl on toys, fid or modes on images."),
    eval_every: Optional[int] = typer.Option(None, min=1, help="Evaluate (and maybe prune) every N steps "
                                                               "(default: steps / 5)."),
    space_file: Optional[Path] = typer.Option(None, "--space", help="TOML file overriding the search space "
                                              "(setting = {low, high, log} or {choices}; false: not searched)."),
    set_: List[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Fix a setting for every trial, as "
                                   "in a config file (repeatable): it is not searched."),
    config_file: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config of fixed settings."),
    study: Optional[str] = typer.Option(None, help="Study name (default: LOSS-DATASET[-ARCH]); an existing study "
                                                   "continues."),
    storage: str = typer.Option(DEFAULT_STORAGE, help="Optuna storage URL; workers that share it "
                                "(e.g. postgresql://...) share the study."),
    out_dir: Path = typer.Option(Path("tune"), help="Parent of the trials' run directories (OUT_DIR/STUDY/trial-N)."),
    seed: int = typer.Option(0, help="Training seed of every trial."),
):
    """Search training settings for a dataset and loss: TPE sampling, trials pruned on the metric when they fall
    behind the median; prints the best settings and writes them as a config (best.toml) and a recipe (recipe.py)."""
    from ganforge import config, layering
    from ganforge.errors import UsageError
    from ganforge.metrics import metric_direction
    from ganforge.tuning import Tune, best_outputs, space

    with user_errors():
        registry = load_registry()
        metric_direction(metric, "--metric")  # a known metric
        fixed = {k: config.check_value(k, v, "--set") for k, v in parse_options(set_, "--set").items()}
        given = {"dataset": dataset, "loss": loss, **({"arch": arch} if arch else {}), **fixed, "steps": steps,
                 "seed": seed, "eval_every": eval_every or max(1, steps // 5)}
        base = layering.build(given, config_file, source="ganforge tune")
        loss_own = getattr(registry.get("losses", loss).factory, "recommended", {})  # part of the method
        file_settings = config.load_toml(config_file) if config_file else {}
        user = {**file_settings, **given}
        not_searched = {*loss_own, *(("pack",) if base.conditional else ()), *(
            f"{key}.{sub}" if key in config.OPTION_TABLES else key
            for key, value in user.items() for sub in (value if key in config.OPTION_TABLES else [None]))}
        searched = space(registry, base.arch, base.loss, space_file, not_searched)
        if not searched:
            raise UsageError("nothing to search: every setting of the space is fixed; see --space")
        name = study or "-".join([registry.get("losses", loss).name, registry.get("datasets", dataset).name,
                                  *([registry.get("architectures", arch).name] if arch else [])])
        typer.echo(f"study {name} in {storage}: {trials} trials of {steps} steps, {metric}; searching "
                   + ", ".join(searched))
        job = Tune(given, metric, trials, searched, name, storage, out_dir, config_file)
        result = job.run()
        best, toml, snippet = best_outputs(result, given, metric, out_dir / name, file_settings)
    typer.echo(f"best: trial {best.number}, {metric} {best.value:.4g} ({best.user_attrs['run_dir']})\n{toml}"
               f"written to {out_dir / name / 'best.toml'} (ganforge train --config) and {out_dir / name / 'recipe.py'}:"
               f"\n{snippet}")
