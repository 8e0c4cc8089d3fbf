"""Settings: one validated object built at the edge (CLI or server start) and passed down.

Sources, highest priority first: CLI flags (passed as keyword overrides), environment
(`PORTFOLIO_SYNC_*`, plus the standard `AWS_*` credential variables), the TOML file
(`--config PATH`, else `./portfolio-sync.toml` when present), then defaults. Nothing else in
the package reads `os.environ`, so tests and embedding programs stay hermetic.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from cronsim import CronSim, CronSimError
from pydantic import AliasChoices, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from portfolio_sync.errors import ConfigError

DEFAULT_EXTENSIONS = (
    "jpg", "jpeg", "png", "webp", "gif", "avif", "heic", "heif", "tif", "tiff", "bmp", "svg",
)  # fmt: skip
#: What an element of the images column may hold when `image_fields` is set (see README).
IMAGE_FIELDS = (
    "path", "url", "width", "height", "bytes", "etag", "uploaded", "type", "placeholder",
)  # fmt: skip
DEFAULT_CONFIG_FILE = Path("portfolio-sync.toml")
Order = Literal["name", "uploaded", "preserve"]
SUPABASE_DB_SCHEME = "supabase-db"  # Supabase Storage read from its storage.objects table
BUCKET_SCHEMES = ("s3", SUPABASE_DB_SCHEME)
#: One part of a table name. Names are always quoted in SQL, so quotes, spaces and any
#: letter are fine; a dot separates the schema, and control characters are refused.
_NAME_PART = re.compile(r"^[^\x00-\x1f\x7f.]+$")


def _split_list(value: Any) -> Any:
    """Accept `a,b` strings from env/CLI as well as TOML arrays."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def parse_collections(value: Any) -> dict[str, str] | None:
    """`col={key}/sub/,col2={key}/other/` (env/CLI) or a TOML table `{col = "{key}/sub/"}`."""
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if not isinstance(value, str):
        raise ValueError("expected 'column={key}/folder/' pairs separated by commas")
    pairs: dict[str, str] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        column, sep, template = item.partition("=")
        if not sep or not column.strip() or not template.strip():
            raise ValueError(
                f"collection {item.strip()!r} is not of the form column={{key}}/folder/"
            )
        if column.strip() in pairs:
            raise ValueError(f"column {column.strip()!r} appears twice")
        pairs[column.strip()] = template.strip()
    return pairs or None


def validate_template(template: str) -> str:
    """A folder template names exactly one `{key}` that forms a whole path segment."""
    if template.count("{key}") != 1:
        raise ValueError(f"folder template {template!r} must contain {{key}} exactly once")
    before, _, after = template.partition("{key}")
    if before and not before.endswith("/"):
        raise ValueError(f"folder template {template!r}: {{key}} must start a path segment")
    if not after.startswith("/"):
        raise ValueError(f"folder template {template!r}: {{key}} must be followed by '/'")
    if template.startswith("/") or "//" in template:
        raise ValueError(f"folder template {template!r} has an empty path segment")
    if not template.endswith("/"):
        raise ValueError(f"folder template {template!r} must end with '/'")
    return template


def normalize_database_url(url: str) -> str:
    """Take connection strings as hosts print them and pick psycopg 3 for PostgreSQL."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(
            f"database URL {url!r} has no scheme (expected sqlite:/// or postgresql://)"
        )
    scheme = scheme.lower()
    if scheme in ("postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"):
        return f"postgresql+psycopg://{rest}"
    if scheme in ("sqlite", "sqlite+pysqlite"):
        return f"sqlite://{rest}"
    raise ValueError(f"database URL scheme {scheme!r} is not supported (use sqlite or postgresql)")


class Settings(BaseSettings):
    """Every option; the env var is `PORTFOLIO_SYNC_<NAME>` unless noted."""

    model_config = SettingsConfigDict(
        env_prefix="PORTFOLIO_SYNC_", extra="forbid", frozen=True, populate_by_name=True
    )

    config_file: ClassVar[Path | None] = None

    database_url: str = "sqlite:///portfolio-sync.db"
    storage_url: str = "storage"
    storage_database_url: str | None = Field(None, validate_default=True)
    s3_endpoint: str | None = None
    aws_access_key_id: str | None = Field(
        None, validation_alias=AliasChoices("aws_access_key_id", "AWS_ACCESS_KEY_ID")
    )
    aws_secret_access_key: str | None = Field(
        None, validation_alias=AliasChoices("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY")
    )
    aws_session_token: str | None = Field(
        None, validation_alias=AliasChoices("aws_session_token", "AWS_SESSION_TOKEN")
    )
    aws_region: str | None = Field(
        None, validation_alias=AliasChoices("aws_region", "AWS_REGION", "AWS_DEFAULT_REGION")
    )
    table: str = "portfolios"
    key_column: str = "id"
    images_column: str = "images"
    folder: str = "{key}/"
    collections: Annotated[dict[str, str] | None, NoDecode] = None
    public_url: str | None = None
    order: Order = "name"
    extensions: Annotated[tuple[str, ...], NoDecode] = DEFAULT_EXTENSIONS
    recursive: bool = False
    image_fields: Annotated[tuple[str, ...], NoDecode] = ()
    schedule: str = "*/15 * * * *"
    webhook_secret: str | None = None
    read_secret: str | None = None
    read_loopback_only: bool = False
    max_empty_share: float = Field(0.1, ge=0.0, le=1.0)
    max_empty_rows: int = Field(5, ge=0)
    guard_window: float = Field(600.0, ge=1.0)
    batch_size: int = Field(500, ge=1, le=5000)
    workers: int = Field(4, ge=1, le=256)
    debounce: float = Field(0.25, ge=0.0, le=60.0)
    sns_auto_confirm: bool = False
    max_body_bytes: int = Field(1 << 20, ge=1024)

    @field_validator("collections", mode="before")
    @classmethod
    def _collections(cls, value: Any) -> dict[str, str] | None:
        parsed = parse_collections(value)
        if parsed:
            for template in parsed.values():
                validate_template(template)
            if len({t.partition("{key}")[0] for t in parsed.values()}) > 1:
                raise ValueError("all collection folders must share the same path before {key}")
        return parsed

    @field_validator("extensions", mode="before")
    @classmethod
    def _extensions(cls, value: Any) -> Any:
        value = _split_list(value)
        if isinstance(value, list | tuple):
            cleaned = tuple(str(v).strip().lstrip(".").lower() for v in value)
            if not cleaned or not all(cleaned):
                raise ValueError("extensions must be a non-empty list such as 'jpg,png'")
            return cleaned
        return value

    @field_validator("image_fields", mode="before")
    @classmethod
    def _image_fields(cls, value: Any) -> Any:
        value = _split_list(value)
        if isinstance(value, list | tuple):
            fields = tuple(str(v).strip().lower() for v in value)
            unknown = [f for f in fields if f not in IMAGE_FIELDS]
            if unknown:
                raise ValueError(
                    f"unknown image field(s) {', '.join(unknown)}; "
                    f"choose from {','.join(IMAGE_FIELDS)}"
                )
            if len(set(fields)) != len(fields):
                raise ValueError("an image field is listed twice")
            if fields and "path" not in fields:
                raise ValueError("image fields must include path (it identifies each image)")
            return fields
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return normalize_database_url(value)

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("storage URL is empty")
        parts = urlsplit(value)
        if parts.scheme in BUCKET_SCHEMES:
            if not parts.netloc:
                raise ValueError(
                    f"storage URL {value!r} has no bucket "
                    f"(expected {parts.scheme}://bucket[/prefix])"
                )
        elif parts.scheme not in ("", "file") and len(parts.scheme) > 1:  # "C:" is a path
            raise ValueError(
                f"storage URL scheme {parts.scheme!r} is not supported (use a folder path, "
                "file://…, s3://bucket[/prefix] or supabase-db://bucket[/prefix])"
            )
        return value

    @field_validator("storage_database_url")
    @classmethod
    def _storage_database_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Only for `supabase-db://`, which needs it unless database_url is PostgreSQL
        (validated after both, which come first)."""
        url = normalize_database_url(value) if value else None  # empty: not set
        if url is not None and not url.startswith("postgresql"):
            raise ValueError("must be a postgresql:// URL")
        storage_url = info.data.get("storage_url")
        database_url = info.data.get("database_url")
        if storage_url is None or database_url is None:  # already reported as invalid
            return url
        if urlsplit(storage_url).scheme != SUPABASE_DB_SCHEME:
            if url is not None:
                raise ValueError("is only used with a supabase-db://bucket storage URL")
        elif url is None and not database_url.startswith("postgresql"):
            raise ValueError(
                f"storage URL {storage_url!r} reads storage.objects: it needs a PostgreSQL "
                "database_url, or this setting naming the database that holds the bucket"
            )
        return url

    @field_validator("s3_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if not value:  # an empty variable means "not set": AWS itself
            return None
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError(f"S3 endpoint {value!r} must be an http:// or https:// URL")
        return value

    @field_validator("folder")
    @classmethod
    def _folder(cls, value: str) -> str:
        return validate_template(value)

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        if not all(_NAME_PART.match(part) for part in value.split(".")) or value.count(".") > 1:
            raise ValueError(f"table {value!r} must be a name or schema.name")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value and "{path}" not in value:
            raise ValueError(f"public URL template {value!r} must contain {{path}}")
        return value or None

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        try:
            CronSim(value, datetime(2000, 1, 1))
        except CronSimError as exc:
            raise ValueError(f"schedule {value!r} is not a valid cron expression: {exc}") from exc
        return value

    def collection_map(self) -> dict[str, str]:
        """Column → folder template; the images/folder pair when no collections are set."""
        return dict(self.collections) if self.collections else {self.images_column: self.folder}

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _config_file_for(settings_cls)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(_TomlFile(settings_cls, toml_file=toml_file))
        return tuple(sources)


class _TomlFile(TomlConfigSettingsSource):
    """The TOML file, with its relative paths taken relative to the file's folder (as in
    any config file): `-c site/portfolio-sync.toml` means the same from any directory."""

    def __init__(self, settings_cls: type[BaseSettings], toml_file: Path) -> None:
        super().__init__(settings_cls, toml_file=toml_file)
        self.folder = toml_file.resolve().parent

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        url = data.get("database_url")
        if isinstance(url, str):
            data["database_url"] = _sqlite_relative_to(url, self.folder)
        storage = data.get("storage_url")
        if isinstance(storage, str) and not urlsplit(storage).scheme.strip():
            if storage.strip() and not Path(storage).expanduser().is_absolute():
                data["storage_url"] = str(self.folder / storage)
        return data


def _sqlite_relative_to(url: str, folder: Path) -> str:
    """`sqlite:///file.db` (a relative path) as an absolute path under `folder`."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.lower().startswith("sqlite") or not rest.startswith("/"):
        return url
    path = rest[1:]
    if not path or path.startswith("/") or path.startswith(":memory:") or path.startswith("file:"):
        return url
    return f"{scheme}:///{folder / path}"


def _config_file_for(settings_cls: type[BaseSettings]) -> Path | None:
    return getattr(settings_cls, "config_file", None)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from flags, env, and the TOML file; errors become one ConfigError.

    `overrides` with value None are ignored, so CLI options can be passed through as is.
    """
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {str(config_file)!r} does not exist")
    path = config_file or (DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None)
    bound = type("Settings", (Settings,), {"config_file": path})
    try:
        settings: Settings = bound(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None
    except ValueError as exc:  # e.g. TOML syntax errors
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None
    return settings


def _describe(exc: ValidationError, path: Path | None) -> str:
    lines = []
    for error in exc.errors():
        name = ".".join(str(p) for p in error["loc"]) or "settings"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            where = f" in {path}" if path else ""
            message = f"unknown setting{where}"
        env = f" (PORTFOLIO_SYNC_{name.upper()})" if name.isidentifier() else ""
        lines.append(f"{name}{env}: {message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
