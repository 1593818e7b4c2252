"""Both networks map [B, 256, 256, 1] images to [B, 256, 256, 2] logits."""
import numpy as np
import pytest
import tensorflow as tf

from trainer import nets
from dataset import records


@pytest.mark.parametrize("name", nets.MODEL_NAMES)
def test_output_shape(name):
    model = nets.build_model(name)
    images = np.zeros((2, records.IMAGE_SIZE, records.IMAGE_SIZE, 1), np.float32)
    assert model(images).shape == (2, records.IMAGE_SIZE, records.IMAGE_SIZE, records.NUM_CLASSES)


def test_lab_net_is_the_labs_layer_stack():
    model = nets.build_lab_fcn()
    convs = [(layer.__class__.__name__, layer.filters, layer.kernel_size, layer.strides)
             for layer in model.layers if hasattr(layer, "filters")]
    assert convs == [
        ("Conv2D", 100, (5, 5), (2, 2)),
        ("Conv2D", 200, (5, 5), (2, 2)),
        ("Conv2D", 300, (3, 3), (1, 1)),
        ("Conv2D", 300, (3, 3), (1, 1)),
        ("Conv2D", 2, (1, 1), (1, 1)),
        ("Conv2DTranspose", 2, (31, 31), (16, 16)),
    ]


def test_unknown_model_is_rejected():
    with pytest.raises(ValueError, match="model must be one of"):
        nets.build_model("resnet")


def test_unet_with_group_norm_has_no_running_statistics():
    """Group norm computes the same in training and inference: nothing to settle from batches."""
    model = nets.build_model(nets.UNET, unet_norm=nets.GROUP_NORM)
    images = np.random.default_rng(0).uniform(0, 1, (2, records.IMAGE_SIZE, records.IMAGE_SIZE, 1))
    np.testing.assert_allclose(model(images, training=True).numpy(),
                               model(images, training=False).numpy(), rtol=1e-4, atol=1e-4)
    assert not any(layer.name.endswith(("_bn1", "_bn2")) for layer in model.layers)
    with pytest.raises(ValueError, match="norm layer must be one of"):
        nets.build_model(nets.UNET, unet_norm="layer")


def test_ensemble_probability_is_the_members_mean():
    members = [nets.build_model(nets.UNET, unet_base_filters=8, model_name=f"unet_{i}")
               for i in range(3)]
    ensemble = nets.build_ensemble(members)
    images = np.random.default_rng(0).uniform(0, 1, (2, records.IMAGE_SIZE, records.IMAGE_SIZE, 1))
    members_mean = np.mean([tf.nn.softmax(member(images)).numpy() for member in members], axis=0)
    np.testing.assert_allclose(tf.nn.softmax(ensemble(images)).numpy(), members_mean, atol=1e-6)
    assert len(ensemble.trainable_weights) == 3 * len(members[0].trainable_weights)
    with pytest.raises(ValueError, match="at least 2 members"):
        nets.build_ensemble(members[:1])
