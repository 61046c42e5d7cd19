"""The `fine_tuning:` block of the gateway settings (names fixed: clients and docs rely on them).

    fine_tuning:
      backend: local            # or docker
      max_parallel_jobs: 1
      files_max_bytes: 536870912
      serve: {idle_stop_s: 900, max_resident: 2, ports: "18100-18199"}
      base_models:
        - name: tiny-demo                   # what callers pass as `model`
          path: ~/.lfwrap/models/tiny-llama # local folder or hub id
          template: default                 # chat template
          overrides: {learning_rate: 5.0e-3, cutoff_len: 128, lora_rank: 16}

`database` (optional) is where the SQLite file lives, default $LFWRAP_HOME/finetune/finetune.db; the
uploaded files are kept in a `files/` folder next to it. Extra keys are refused everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from wrapper.errors import ConfigError, Problem
from wrapper.home import home
from wrapper.pydantic_errors import messages, repeated
from wrapper.yamlload import read_mapping

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # also a part of `ft:<base>:<suffix>:<job>`


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServeSettings(_Strict):
    idle_stop_s: float = Field(900, gt=0)
    max_resident: int = Field(2, ge=1)
    ports: str = "18100-18199"

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: str) -> str:
        parts = value.split("-")
        if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"expected a port range like '18100-18199', got {value!r}")
        low, high = int(parts[0]), int(parts[-1])
        if not 1024 <= low <= high <= 65535:
            raise ValueError(f"ports {value!r} must be a rising range within 1024-65535")
        return value

    @property
    def port_range(self) -> range:
        parts = self.ports.split("-")
        return range(int(parts[0]), int(parts[-1]) + 1)


class BaseModelEntry(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    path: str = Field(min_length=1)
    template: str = Field(min_length=1)
    overrides: dict[str, Any] = Field(default_factory=dict)

    @property
    def model_path(self) -> str:
        """A local folder (with ~ expanded) or a hub id, as given."""
        expanded = Path(self.path).expanduser()
        return str(expanded) if self.path.startswith(("~", "/", ".")) else self.path


class FineTuningSettings(_Strict):
    backend: Literal["local", "docker"] = "local"
    max_parallel_jobs: int = Field(1, ge=1)
    files_max_bytes: int = Field(512 * 1024 * 1024, gt=0)
    serve: ServeSettings = Field(default_factory=lambda: ServeSettings.model_validate({}))
    base_models: list[BaseModelEntry] = Field(default_factory=list)
    database: str | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> FineTuningSettings:
        twice = repeated(entry.name for entry in self.base_models)
        if twice:
            raise ValueError(f"base model name(s) {', '.join(twice)} appear more than once")
        return self

    @property
    def database_path(self) -> Path:
        if self.database:
            return Path(self.database).expanduser().resolve()
        return home() / "finetune" / "finetune.db"

    def base_model(self, name: str) -> BaseModelEntry | None:
        return next((entry for entry in self.base_models if entry.name == name), None)


def parse_settings(data: Any, source: str = "settings") -> FineTuningSettings:
    """The `fine_tuning:` mapping checked; ConfigError listing every problem (with "did you mean")."""
    try:
        return FineTuningSettings.model_validate(data if data is not None else {})
    except ValidationError as exc:
        texts = messages(exc, FineTuningSettings, prefix="fine_tuning.", top="fine_tuning")
        problems = [Problem(text, file=source) for text in texts]
        raise ConfigError(
            f"The fine_tuning settings in {source} have {len(problems)} problem(s); fix them as listed.",
            problems=problems,
        ) from None


def load_settings(path: Path) -> FineTuningSettings:
    """The `fine_tuning:` block of a gateway YAML file (defaults when the block is absent)."""
    return parse_settings(read_mapping(path, "gateway config").get("fine_tuning"), str(path))
