"""trainer.cluster: the role TF_CONFIG gives a Trainer process, as Vertex AI and TFJobs set it."""
import json
import os

import pytest

from trainer import cluster
from trainer.config import TrainingConfig

VERTEX = {"cluster": {"chief": ["cmle-training-workerpool0-ab-0:2222"],
                      "worker": ["cmle-training-workerpool1-ab-0:2222",
                                 "cmle-training-workerpool1-ab-1:2222"]},
          "environment": "cloud", "job": {"worker_pool_specs": []}}


def role(tf_config):
    text = tf_config if isinstance(tf_config, str) else json.dumps(tf_config)
    return cluster.from_environment({cluster.TF_CONFIG_ENV: text})


def test_no_tf_config_is_one_process():
    assert cluster.from_environment({}) == cluster.ClusterRole()
    assert not cluster.ClusterRole().multi_worker and cluster.ClusterRole().is_chief
    assert role({"task": {"type": "worker", "index": 0}}).num_workers == 1  # no cluster


@pytest.mark.parametrize("task, is_chief", [
    ({"type": "chief", "index": 0}, True),
    ({"type": "worker", "index": 0}, False),  # the cluster has a chief: worker 0 is not it
    ({"type": "worker", "index": 1}, False),
])
def test_vertex_roles(task, is_chief):
    found = role(dict(VERTEX, task=task))
    assert found.multi_worker and found.num_workers == 3
    assert found.is_chief == is_chief


def test_without_a_chief_worker_0_is_the_chief():
    """A TFJob with Worker replicas only: TensorFlow's rule (multi_worker_util.is_chief)."""
    tf_config = {"cluster": {"worker": ["w-0:2222", "w-1:2222"]}, "environment": "cloud"}
    assert role(dict(tf_config, task={"type": "worker", "index": 0})).is_chief
    assert not role(dict(tf_config, task={"type": "worker", "index": 1})).is_chief


@pytest.mark.parametrize("tf_config, message", [
    ("{not json", "not JSON"),
    ("[1, 2]", "JSON object"),
    (dict(VERTEX, cluster=dict(VERTEX["cluster"], ps=["ps-0:2222"]),
          task={"type": "chief", "index": 0}), "parameter servers"),
    (dict(VERTEX, task={"type": "evaluator", "index": 0}), "not one of the cluster's"),
    (dict(VERTEX, task={"type": "worker", "index": 2}), "outside the 2 worker"),
    ({"cluster": {"trainer": ["a:1", "b:1"]}, "task": {"type": "trainer", "index": 0}},
     "unknown task types"),
])
def test_tf_configs_it_cannot_train_with_are_refused(tf_config, message):
    with pytest.raises(ValueError, match=message):
        role(tf_config)


def test_only_the_chief_writes_to_the_outputs(tmp_path):
    output = str(tmp_path / "model")
    chief = role(dict(VERTEX, task={"type": "chief", "index": 0}))
    assert cluster.private_dir(chief, output) == output
    worker = role(dict(VERTEX, task={"type": "worker", "index": 1}))
    private = cluster.private_dir(worker, output)
    assert not private.startswith(str(tmp_path)) and os.path.basename(private) == "model"
    os.makedirs(private)
    cluster.remove_private_dir(worker, private)
    assert not os.path.exists(os.path.dirname(private))
    cluster.remove_private_dir(chief, output)  # never deletes the chief's output
    assert os.path.exists(str(tmp_path))


def test_the_global_batch_must_split_evenly_over_the_replicas():
    from trainer import training

    training.check_batch_size(8, 2)
    with pytest.raises(ValueError, match="multiple of the 3 replicas"):
        training.check_batch_size(8, 3)


def test_training_settings_skip_the_vertex_extension_keys():
    """TFX's Vertex AI training extension passes its custom_config keys on to every replica."""
    config = TrainingConfig.from_custom_config({
        "batch_size": 4, "ai_platform_training_args": {"project": "p"},
        "ai_platform_enable_vertex": True, "ai_platform_vertex_region": "europe-west4"})
    assert config.batch_size == 4
    with pytest.raises(ValueError, match="unknown training option"):
        TrainingConfig.from_custom_config({"batch_sise": 4})
