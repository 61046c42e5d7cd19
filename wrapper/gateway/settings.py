"""The gateway's one settings object: a YAML file, then LFWRAP_* environment variables, then flags.

Priority, highest first: values passed in code (the CLI's flags), environment variables
(LFWRAP_PORT=9000, LFWRAP_MODELS='[{"name": "conch", "upstream": "http://127.0.0.1:8000"}]'),
the YAML file, the defaults below. Unknown keys are refused with a "did you mean".
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from wrapper.errors import GatewayError, Problem
from wrapper.finetune.settings import FineTuningSettings
from wrapper.home import home
from wrapper.pydantic_errors import messages, repeated
from wrapper.rag.route import RagRoute
from wrapper.yamlload import read_mapping

# Values people paste from examples instead of a real secret.
PLACEHOLDER_SECRETS = {
    "",
    "changeme",
    "change-me",
    "change_me",
    "secret",
    "password",
    "token",
    "apikey",
    "api-key",
    "api_key",
    "your-api-key",
    "your_api_key",
    "yourapikey",
    "your-key",
    "xxx",
    "todo",
    "placeholder",
    "example",
    "test",
    "sk-xxx",
    "sk-...",
    "none",
    "null",
    "dummy",
    "fake",
}


def is_placeholder(secret: str) -> bool:
    lowered = secret.strip().lower()
    if (
        lowered in PLACEHOLDER_SECRETS
        or lowered.startswith("<")
        or set(lowered) <= {"x", "-", "*", ".", "s", "k"}
    ):
        return True
    return "changeme" in lowered.replace("-", "").replace("_", "") or "your" in lowered


class SettingsError(GatewayError):
    """Gateway settings failed validation; `problems` lists every finding."""

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems = problems or []


class ModelRoute(BaseModel):
    """One model name callers ask for, and the LLaMA-Factory API server that answers it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, description="The `model` callers put in requests.")
    upstream: str | list[str] = Field(
        description="Base URL of the API server, e.g. http://127.0.0.1:8000, or a list of them: replicas "
        "of one model, balanced by fewest requests in flight; a replica that refuses connections leaves "
        "the rotation until it lists its models again.",
    )
    upstream_key: SecretStr | None = Field(default=None, description="API_KEY the upstream server expects.")
    max_concurrency: int = Field(
        default=1, ge=1, le=4096, description="Requests in flight to each upstream replica."
    )
    max_queue: int = Field(default=32, ge=0, le=100_000, description="Requests waiting behind them (FIFO).")
    queue_timeout: float = Field(default=60.0, gt=0, description="Seconds a request may wait in the queue.")
    connect_timeout: float = Field(default=5.0, gt=0, description="Seconds to open a connection upstream.")
    read_timeout: float = Field(
        default=300.0, gt=0, description="Seconds allowed between two upstream reads."
    )
    health_interval: float = Field(
        default=5.0, gt=0, le=3600, description="Seconds between checks of a replica out of rotation."
    )
    tokenizer: Path | None = Field(
        default=None, description="tokenizer.json (or the model folder holding it) for usage counts."
    )
    rag: RagRoute | None = Field(
        default=None,
        description="Ground this model's chat requests in a `lfwrap rag` index: {index, top_k, min_score, "
        "max_context_tokens}.",
    )

    @field_validator("upstream")
    @classmethod
    def _http_urls(cls, given: str | list[str]) -> str | list[str]:
        values = [given] if isinstance(given, str) else given
        if not 1 <= len(values) <= 64:
            raise ValueError("upstream lists 1 to 64 URLs")
        urls: list[str] = []
        for raw in values:
            value = raw.strip().rstrip("/")
            if not value.startswith(("http://", "https://")) or len(value.split("://", 1)[1]) == 0:
                raise ValueError(f"upstream must be an http:// or https:// URL, got {value!r}")
            if value.endswith("/v1"):
                value = value[: -len("/v1")]
            if value in urls:
                raise ValueError(f"upstream lists {value} twice")
            urls.append(value)
        return urls[0] if isinstance(given, str) else urls

    @property
    def urls(self) -> list[str]:
        """The upstream's URLs: one, or each replica's."""
        return [self.upstream] if isinstance(self.upstream, str) else list(self.upstream)

    @field_validator("upstream_key")
    @classmethod
    def _real_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and any(c in value.get_secret_value() for c in "\r\n\t "):
            raise ValueError("upstream_key must not contain spaces or line breaks")
        if value is not None and is_placeholder(value.get_secret_value()):
            raise ValueError(
                "upstream_key looks like a placeholder; set the API_KEY the upstream really uses"
            )
        return value


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LFWRAP_", extra="forbid", env_nested_delimiter="__")

    host: str = Field(default="127.0.0.1", description="Listen address.")
    port: int = Field(default=8080, ge=0, le=65535, description="Listen port.")
    models: list[ModelRoute] = Field(default_factory=list, description="Model name -> upstream routes.")
    auth: Literal["keys", "open"] = Field(
        default="keys",
        description="keys: every request needs a key from `lfwrap keys create`; open: no key checked.",
    )
    keys_db: Path | None = Field(
        default=None, description="SQLite key store (default $LFWRAP_HOME/gateway/keys.db)."
    )
    max_body_bytes: int = Field(default=4_000_000, ge=1024, description="Largest request body accepted.")
    shutdown_timeout: float = Field(
        default=30.0, ge=0, description="Seconds in-flight streams get at shutdown."
    )
    # limits the HTTP server enforces (granian/hyper) or the app right behind it; see docs/RELIABILITY.md
    max_header_bytes: int = Field(
        default=65_536,
        ge=8192,
        le=1_048_576,
        description="Request line and headers together; more is closed (HTTP/1) or refused (HTTP/2).",
    )
    max_url_bytes: int = Field(default=8192, ge=256, le=65_536, description="Longest path + query (414).")
    header_timeout: float = Field(
        default=10.0,
        ge=1,
        le=60,
        description="Seconds to receive a request's headers, and the most a kept-alive connection idles.",
    )
    body_timeout: float = Field(
        default=15.0, gt=0, le=600, description="Seconds to receive a whole request body (408)."
    )
    send_timeout: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Seconds one write to a caller may wait; a caller who stops reading is cut off.",
    )
    max_connections: int = Field(
        default=1024,
        ge=1,
        le=65_536,
        description="Connections served at once; more wait in the listen backlog until one ends.",
    )
    max_response_bytes: int = Field(
        default=64_000_000, ge=1024, description="Largest non-streamed upstream answer passed on (502)."
    )
    tls_cert: Path | None = Field(default=None, description="PEM certificate: serve HTTPS (with tls_key).")
    tls_key: Path | None = Field(default=None, description="PEM private key for tls_cert.")
    http2: bool = Field(default=True, description="Offer HTTP/2 (ALPN) when serving TLS.")
    ops_need_key: bool = Field(
        default=False,
        description="Require an API key for /metrics, /readyz and /docs too (/healthz stays open).",
    )
    access_log: bool = Field(
        default=True, description="One line per request on the lfwrap.gateway.access logger."
    )
    fine_tuning: FineTuningSettings | None = Field(
        default=None,
        description="OpenAI's /v1/files and /v1/fine_tuning/jobs on this gateway, and its ft: models "
        "(backend, max_parallel_jobs, files_max_bytes, serve, base_models, database).",
    )

    @model_validator(mode="before")
    @classmethod
    def _empty_block_is_on(cls, data: Any) -> Any:
        # `fine_tuning:` with only comments under it turns fine-tuning on with the defaults; no key: off
        if isinstance(data, dict) and "fine_tuning" in data and data["fine_tuning"] is None:
            return {**data, "fine_tuning": {}}
        return data

    @model_validator(mode="after")
    def _tls_pair(self) -> GatewaySettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both to serve HTTPS, or neither")
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> GatewaySettings:
        dupes = repeated(route.name for route in self.models)
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {', '.join(dupes)}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))

    def keys_path(self) -> Path:
        return self.keys_db if self.keys_db is not None else home() / "gateway" / "keys.db"

    def route(self, name: str) -> ModelRoute | None:
        for route in self.models:
            if route.name == name:
                return route
        return None


_yaml_data: ContextVar[dict[str, Any] | None] = ContextVar("_yaml_data", default=None)


class _YamlSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        data = _yaml_data.get() or {}
        return data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_yaml_data.get() or {})


def _problems(exc: ValidationError, file: str) -> list[Problem]:
    return [Problem(message=text, file=file) for text in messages(exc, GatewaySettings)]


def load_settings(config: Path | None = None, **overrides: Any) -> GatewaySettings:
    """Settings from `config` (YAML), LFWRAP_* environment and `overrides` (None values are skipped)."""
    data = read_mapping(config, "gateway config", SettingsError, "host, port, models ...") if config else {}
    token = _yaml_data.set(data)
    try:
        return GatewaySettings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as exc:
        file = str(config) if config is not None else "gateway settings"
        problems = _problems(exc, file)
        raise SettingsError(
            f"The gateway settings in {file} have {len(problems)} problem(s); fix them and start again.",
            problems,
        ) from exc
    finally:
        _yaml_data.reset(token)
