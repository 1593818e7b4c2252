"""The compiled pipeline's run-time parameters: their JSON form, and overrides checked before a
run is sent.

TFX 1.16 takes a run-time parameter only for a whole proto or dict, so each parameter is one JSON
string: ``train_args`` (TFX ``TrainArgs``), ``eval_config`` (TFMA ``EvalConfig``, the gate) and
``training_config`` (``trainer.config.TrainingConfig`` fields). A bad value would otherwise fail
only inside the Trainer or Evaluator, after the data stages; :func:`check` parses each one as its
executor will and applies the same rules, so a bad override is refused before anything is sent.
"""
import json
from typing import Any, Dict, Mapping, Optional

from google.protobuf import json_format, message

from pipeline import configs


class ParameterError(ValueError):
    """An override that cannot work; the message names the parameter and the reason."""


def to_json(value: Any) -> str:
    """A parameter's value: one line of JSON (field names as in the .proto files, as TFX writes
    them), short enough to read and edit in the Kubeflow UI."""
    if isinstance(value, message.Message):
        return json_format.MessageToJson(value, preserving_proto_field_name=True, indent=None,
                                         sort_keys=True)
    return json.dumps(value, sort_keys=True)


def check_min_dice(min_dice: float) -> float:
    if not 0.0 <= min_dice <= 1.0:
        raise ParameterError(f"a Dice threshold is in [0, 1], got {min_dice}")
    return min_dice


def _json_object(name: str, text: str, kind: str) -> dict:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParameterError(f"{name} is not a valid {kind}: not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ParameterError(f"{name} is not a valid {kind}: a JSON object is needed, got "
                             f"{text!r}")
    return document


def _proto(name: str, text: str, proto: message.Message) -> message.Message:
    kind = type(proto).__name__
    document = _json_object(name, text, kind)
    try:
        json_format.ParseDict(document, proto)  # unknown fields refused, as TFX's parser does
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise ParameterError(f"{name} is not a valid {kind}: {exc}") from None
    return proto


def check_train_args(text: str) -> str:
    from tfx.proto import trainer_pb2
    train_args = _proto(configs.TRAIN_ARGS_PARAMETER, text, trainer_pb2.TrainArgs())
    if train_args.num_steps < 1:
        raise ParameterError(f"{configs.TRAIN_ARGS_PARAMETER}: num_steps must be at least 1, "
                             f"got {train_args.num_steps}")
    return to_json(train_args)


def check_eval_config(text: str) -> str:
    import tensorflow_model_analysis as tfma

    from pipeline import eval_config as eval_config_lib

    eval_config = _proto(configs.EVAL_CONFIG_PARAMETER, text, tfma.EvalConfig())
    try:
        threshold = eval_config_lib.overall_dice_threshold(eval_config)
    except ValueError as exc:
        raise ParameterError(f"{configs.EVAL_CONFIG_PARAMETER}: {exc}; without it the gate "
                             "would bless no model") from None
    if threshold.HasField("value_threshold"):
        check_min_dice(threshold.value_threshold.lower_bound.value)
    return to_json(eval_config)


def check_training_config(text: str) -> str:
    from trainer import config as trainer_config
    config = _json_object(configs.TRAINING_CONFIG_PARAMETER, text, "TrainingConfig")
    try:
        trainer_config.TrainingConfig.from_custom_config(config)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"{configs.TRAINING_CONFIG_PARAMETER}: {exc}") from None
    return to_json(config)


CHECKS = {configs.TRAIN_ARGS_PARAMETER: check_train_args,
          configs.EVAL_CONFIG_PARAMETER: check_eval_config,
          configs.TRAINING_CONFIG_PARAMETER: check_training_config}


def check(name: str, text: str) -> str:
    """The value of parameter ``name``, parsed and checked as its executor will read it."""
    if name not in CHECKS:
        raise ParameterError(f"the pipeline has no parameter {name!r}; it has {sorted(CHECKS)}")
    if not isinstance(text, str):
        raise ParameterError(f"{name} is a JSON string, got {type(text).__name__}")
    return CHECKS[name](text)


def overrides(defaults: Mapping[str, str], *, train_steps: Optional[int] = None,
              model: Optional[str] = None, min_dice: Optional[float] = None,
              params: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The parameters a run sets: whole values (``params``, NAME -> JSON) and edits of the
    package's defaults by the shortcuts, every one checked; a shortcut and a whole value for the
    same parameter are refused (one would silently win)."""
    params = dict(params or {})
    shortcuts = {configs.TRAIN_ARGS_PARAMETER: ("--train-steps", train_steps),
                 configs.TRAINING_CONFIG_PARAMETER: ("--model", model),
                 configs.EVAL_CONFIG_PARAMETER: ("--min-dice", min_dice)}
    for name, (option, value) in shortcuts.items():
        if value is not None and name in params:
            raise ParameterError(f"{option} and --param {name}=... both set {name}: give one")
    missing = sorted(set(shortcuts) - set(defaults))
    if missing:
        raise ParameterError(f"the package declares no parameter(s) {missing}: it was not "
                             "compiled by `lvseg kubeflow compile`")
    result = {name: check(name, value) for name, value in params.items()}
    if train_steps is not None:
        from tfx.proto import trainer_pb2
        train_args = _proto(configs.TRAIN_ARGS_PARAMETER, defaults[configs.TRAIN_ARGS_PARAMETER],
                            trainer_pb2.TrainArgs())
        train_args.num_steps = train_steps
        result[configs.TRAIN_ARGS_PARAMETER] = check_train_args(to_json(train_args))
    if model is not None:
        training = json.loads(defaults[configs.TRAINING_CONFIG_PARAMETER])
        result[configs.TRAINING_CONFIG_PARAMETER] = check_training_config(
            to_json({**training, "model": model}))
    if min_dice is not None:
        import tensorflow_model_analysis as tfma

        from pipeline import eval_config as eval_config_lib

        check_min_dice(min_dice)
        eval_config = _proto(configs.EVAL_CONFIG_PARAMETER,
                             defaults[configs.EVAL_CONFIG_PARAMETER], tfma.EvalConfig())
        # The overall Dice threshold is a per-slice threshold on the overall slice: a
        # MetricConfig.threshold would apply min_dice to every patient and LV size slice.
        try:
            eval_config_lib.set_min_dice(eval_config, min_dice)
        except ValueError as exc:
            raise ParameterError(f"the package's eval_config has no overall Dice threshold to "
                                 f"set ({exc})") from None
        result[configs.EVAL_CONFIG_PARAMETER] = check_eval_config(to_json(eval_config))
    return result
