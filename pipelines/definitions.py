"""The one place where SEM's Dagster definitions are assembled: assets, checks, jobs, schedules, sensors, resources.

Assets and checks are collected from every module of the `assets` package, schedules and sensors from
every module of the `sensors` package, so a new stage is one new module.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import dagster as dg

import assets as assets_package
import sensors as sensors_package
from pipelines.orchestration.jobs import ALL_JOBS, RUN_EXECUTOR
from pipelines.orchestration.resources import default_resources


def _modules(package: ModuleType) -> list[ModuleType]:
    return [
        importlib.import_module(f"{package.__name__}.{info.name}")
        for info in pkgutil.iter_modules(package.__path__)
        if not info.name.startswith("_")
    ]


def _instances(modules: list[ModuleType], kind: type) -> list:
    return [obj for module in modules for obj in vars(module).values() if isinstance(obj, kind)]


_asset_modules = _modules(assets_package)
_sensor_modules = _modules(sensors_package)

defs = dg.Definitions(
    assets=dg.load_assets_from_modules(_asset_modules),
    asset_checks=dg.load_asset_checks_from_modules(_asset_modules),
    jobs=ALL_JOBS,
    schedules=_instances(_sensor_modules, dg.ScheduleDefinition),
    sensors=_instances(_sensor_modules, dg.SensorDefinition),
    resources=default_resources(),
    executor=RUN_EXECUTOR,
)
