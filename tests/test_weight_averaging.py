"""Stochastic weight averaging (trainer.weight_averaging): the schedule, the running mean of the
weights, and the batch-norm statistics recomputed for the averaged weights."""
import numpy as np
import pytest
import tensorflow as tf

from pipeline import configs
from trainer import config as trainer_config, training, weight_averaging


def test_schedule_decays_by_cosine_to_the_floor_then_holds_it():
    schedule = weight_averaging.AveragingSchedule(1e-3, 2.5e-4, decay_steps=100)
    rates = [float(schedule(step)) for step in range(0, 151)]
    assert rates[0] == pytest.approx(1e-3)
    assert rates[50] == pytest.approx(2.5e-4 + 0.75e-3 * 0.5, rel=1e-5)
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert rates[100:] == pytest.approx([2.5e-4] * 51)
    # saved with the optimizer: it rebuilds from its config
    rebuilt = weight_averaging.AveragingSchedule.from_config(schedule.get_config())
    assert float(rebuilt(30)) == pytest.approx(rates[30])


def test_averaging_starts_at_the_share_of_the_run_and_never_after_the_last_step():
    assert weight_averaging.averaging_start(600, 0.25) == 450
    assert weight_averaging.averaging_start(2, 0.25) == 1
    assert weight_averaging.averaging_start(600, 0.0) == 600


def test_training_without_averaging_keeps_the_plain_cosine_decay():
    config = trainer_config.TrainingConfig()
    assert isinstance(training.learning_rate_schedule(config, 100),
                      tf.keras.optimizers.schedules.CosineDecay)


class _Snapshots(tf.keras.callbacks.Callback):
    """Records the weights after every step, independently of WeightAverage."""

    def __init__(self):
        super().__init__()
        self.after_step = []

    def on_train_batch_end(self, batch, logs=None):
        self.after_step.append([w.numpy().copy() for w in self.model.trainable_weights])


def test_the_model_ends_with_the_mean_of_the_weights_taken_every_few_steps():
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(3),
                                 tf.keras.layers.Dense(1)])
    model.compile(optimizer=tf.keras.optimizers.SGD(0.05), loss="mse")
    data = np.random.default_rng(0).normal(size=(8 * 25, 4)).astype(np.float32)
    snapshots = _Snapshots()
    average = weight_averaging.WeightAverage(start=5, every=4)
    # the snapshots callback runs first, so it sees each step's weights before any averaging
    model.fit(data, data.sum(axis=1), batch_size=8, epochs=1, shuffle=False,
              callbacks=[snapshots, average], verbose=0)
    taken = [snapshots.after_step[step - 1] for step in range(5, 26, 4)]  # steps 5, 9, ... 25
    assert average.snapshots == len(taken) == 6
    for index, variable in enumerate(model.trainable_weights):
        expected = np.mean([weights[index] for weights in taken], axis=0)
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-5, atol=1e-6)
        # and not the last step's weights
        assert not np.allclose(variable.numpy(), snapshots.after_step[-1][index])


def test_batch_norm_statistics_become_the_exact_mean_over_the_batches():
    model = tf.keras.Sequential([tf.keras.Input((6, 6, 3)),
                                 tf.keras.layers.BatchNormalization(momentum=0.9)])
    layer = model.layers[0]
    weights_before = [w.name for w in model.weights]
    rng = np.random.default_rng(1)
    batches = [rng.normal(loc=index, scale=1.0 + index, size=(4, 6, 6, 3)).astype(np.float32)
               for index in range(5)]
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.concatenate(batches), np.zeros(20, np.float32))).batch(4)
    strategy = tf.distribute.get_strategy()
    assert weight_averaging.refresh_batch_norm(
        model, strategy.experimental_distribute_dataset(dataset), strategy, batches=5) == 1
    np.testing.assert_allclose(layer.moving_mean.numpy(),
                               np.mean([b.mean(axis=(0, 1, 2)) for b in batches], axis=0),
                               rtol=1e-5)
    # Keras keeps the unbiased batch variance (n / (n - 1) x the batch's own) as the moving one
    np.testing.assert_allclose(layer.moving_variance.numpy(),
                               np.mean([b.var(axis=(0, 1, 2), ddof=1) for b in batches], axis=0),
                               rtol=1e-4)
    # the layer keeps its own momentum for later training, and no new weight is saved with it
    assert layer.momentum == 0.9
    assert [w.name for w in model.weights] == weights_before


def test_a_model_without_batch_norm_is_left_alone():
    model = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(1)])
    strategy = tf.distribute.get_strategy()
    assert weight_averaging.refresh_batch_norm(model, None, strategy) == 0


@pytest.mark.parametrize("overrides, message", [
    (dict(average_last=1.0), "average_last must be in"),
    (dict(average_last=-0.1), "average_last must be in"),
    (dict(average_last=0.25, averaging_learning_rate=0.0), "averaging_learning_rate"),
    (dict(average_last=0.25, averaging_learning_rate=1e-2), "averaging_learning_rate"),
])
def test_bad_averaging_settings_are_refused_before_training(overrides, message):
    with pytest.raises(ValueError, match=message):
        configs.training_custom_config(overrides)
