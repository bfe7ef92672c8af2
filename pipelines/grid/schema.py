"""The ablation config file: read (:func:`load_ablation`) and validated against
``workflow/schemas/ablation.schema.yaml`` with its defaults filled in (:func:`validate_ablation`);
a mistake is one line naming the key (:func:`describe_schema_error`)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

from pipelines.errors import UserError

#: the schema every ablation config is validated against
SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "ablation.schema.yaml"


def load_ablation(path: str | Path) -> dict[str, Any]:
    """Read an ablation YAML (no schema defaults; the Snakefile validates with snakemake)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ablation config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"cannot parse {path}: {yaml_error_line(err)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return data


def yaml_error_line(err) -> str:
    """A PyYAML error -> one line with its line and column (``line 4, column 7: ...``)."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context = getattr(err, "context", None)
    text = f"{where}{problem}" + (f" ({context})" if context else "")
    return " ".join(text.split())


def validate_ablation(config: dict, schema: str | Path | None = None, *,
                      check_data: bool = True) -> dict:
    """Validate against the JSON schema (filling defaults) -> config; one-line UserError.

    Values from Snakemake's ``--config`` arrive as text inside a mapping (it reads them with
    YAML's BaseLoader: ``data={root: /x, synthetic: null}`` gives ``synthetic: 'null'``); a text
    value the schema refuses is read again as a YAML scalar, in place (:func:`_coerce_text`).

    Args:
        check_data: with ``data.synthetic: null`` the dataset is the user's, so ``data.root``
            must be a folder with something in it (checked here, before any job; its layout is
            checked against each model config by :func:`expand_grid`).
    """
    import jsonschema
    import yaml

    schema_path = Path(schema) if schema else SCHEMA
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 15 -> 2 ms at each start
    schema_doc = yaml.load(schema_path.read_text(), Loader=loader)
    validator_cls = jsonschema.validators.validator_for(schema_doc)
    validator = _with_defaults(validator_cls)(schema_doc)
    _coerce_text(config, validator)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise UserError(describe_schema_error(errors[0]))
    check_tracking_uri(config)
    if check_data:
        check_data_root(config)
    return config


def check_tracking_uri(config: Mapping) -> None:
    """``mlflow.tracking_uri`` must name a store MLflow has (``foo://bar`` would stop the real
    run at its first look at the store), and an existing SQLite file must be a database."""
    from pipelines.store_uri import check_readable

    uri = (config.get("mlflow") or {}).get("tracking_uri")
    if uri:
        try:
            check_readable(str(uri))
        except UserError as err:
            raise UserError(f"ablation config key 'mlflow.tracking_uri': {err}") from None


def _coerce_text(config: dict, validator) -> None:
    """Text values the schema refuses, read again as YAML scalars where that gives a number, a
    boolean or null (``'null'`` -> None, ``'8'`` -> 8): what ``--config`` meant."""
    import yaml

    def errors(errs):
        for err in errs:
            yield err
            yield from errors(err.context or ())

    for _ in range(100):  # one pass per nesting level is plenty
        changed = False
        for err in list(errors(validator.iter_errors(config))):
            if not isinstance(err.instance, str) or not err.absolute_path:
                continue
            try:
                value = yaml.safe_load(err.instance)
            except yaml.YAMLError:
                continue
            if value is not None and not isinstance(value, (bool, int, float)):
                continue
            *parents, last = list(err.absolute_path)
            node = config
            for part in parents:
                node = node[part]
            if node[last] == err.instance:
                node[last] = value
                changed = True
        if not changed:
            return


def check_data_root(config: Mapping) -> None:
    """With ``data.synthetic: null``, ``data.root`` must be an existing, non-empty folder."""
    data = config.get("data") or {}
    if data.get("synthetic") is not None:
        return
    root = Path(str(data.get("root") or "data/synthetic"))
    hint = ("give your dataset's folder as data.root, or data.synthetic to generate the "
            "synthetic set there")
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "not found"
        raise UserError(f"ablation config key 'data.root': dataset folder {what}: {root} "
                        f"(data.synthetic is null; {hint})")
    try:
        empty = not any(root.iterdir())
    except OSError as err:
        raise UserError(f"ablation config key 'data.root': cannot read {root}: "
                        f"{err.strerror}") from None
    if empty:
        raise UserError(f"ablation config key 'data.root': dataset folder is empty: {root} "
                        f"(data.synthetic is null; {hint})")


def describe_schema_error(error) -> str:
    """A jsonschema ValidationError -> ``ablation config key 'a.b': <what is wrong>``."""
    path = ".".join(str(p) for p in error.absolute_path)
    message = error.message
    if error.validator == "additionalProperties":
        extra = re.findall(r"'([^']+)' was unexpected", message)
        if extra:
            path = ".".join(p for p in (path, extra[0]) if p)
            message = "unknown key"
    elif error.validator == "enum":
        message = f"{error.instance!r} is not one of {error.validator_value}"
    return f"ablation config key {path or '(top level)'!r}: {message}"


def _with_defaults(validator_cls):
    """A jsonschema validator class that also fills ``default`` values in (as snakemake does)."""
    import jsonschema

    base = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = json.loads(json.dumps(sub["default"]))
        yield from base(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_cls, {"properties": set_defaults})
