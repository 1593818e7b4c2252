"""SunnybrookExampleGen: an ExampleGen that reads DICOMs + expert LV contours directly.

It does inside the pipeline what ``lvseg data sunnybrook`` does on the command line
(:func:`dataset.sunnybrook.ingest`): pairs contours with DICOMs by case and InstanceNumber,
fills the masks, splits by patient, and writes lab-schema records into the ``Split-train`` and
``Split-eval`` folders of its Examples artifact, which every downstream component reads like
ImportExampleGen's output. The ingest summary (skips by reason, the split) is saved in the
artifact as ``ingest_summary.json``.
"""
from tfx import v1 as tfx
from tfx.components.example_gen import utils as example_gen_utils
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils

from dataset import sunnybrook

SPLITS = ("train", "eval")


@tfx.dsl.components.component
def SunnybrookExampleGen(
    examples: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.Examples],
    dicom_root: tfx.dsl.components.Parameter[str],
    contour_root: tfx.dsl.components.Parameter[str],
    link_path: tfx.dsl.components.Parameter[str] = "",
    eval_fraction: tfx.dsl.components.Parameter[float] = sunnybrook.DEFAULT_EVAL_FRACTION,
    seed: tfx.dsl.components.Parameter[int] = sunnybrook.DEFAULT_SEED,
    input_fingerprint: tfx.dsl.components.Parameter[str] = "",
) -> None:
    """Reads ``dicom_root`` and ``contour_root`` (both SCD layouts; ``link_path`` maps contour
    case folders to DICOM folders). ``input_fingerprint`` only keys the cache (see
    :func:`dataset.sunnybrook.input_fingerprint`)."""
    del input_fingerprint
    examples.split_names = artifact_utils.encode_split_names(list(SPLITS))
    summary = sunnybrook.ingest(
        dicom_root, contour_root, link_path or None, examples.uri, eval_fraction=eval_fraction,
        seed=seed, progress=False,
        split_folder=lambda split: artifact_utils.get_split_uri([examples], split))
    missing = [split for split in SPLITS if split not in summary["splits"]]
    if missing:
        raise ValueError(
            f"no patient left for the {' and '.join(missing)} split: "
            f"{sum(len(s['patients']) for s in summary['splits'].values())} patient(s) with "
            f"usable slices, eval_fraction={eval_fraction}")
    examples.span = 0
    examples.set_string_custom_property(
        example_gen_utils.PAYLOAD_FORMAT_PROPERTY_NAME,
        example_gen_pb2.PayloadFormat.Name(example_gen_pb2.FORMAT_TF_EXAMPLE))
