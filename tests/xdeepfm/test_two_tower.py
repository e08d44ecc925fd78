"""The two-tower recall channel: the log-Q loss, training, and a cold item recalled through its content."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from xdeepfm.features import FeaturePipeline, load_spec
from xdeepfm.two_tower import TwoTowerChannel, TwoTowerConfig, sampled_softmax_loss


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train faster on one thread than on two contended ones."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_logq_correction_on_a_known_case():
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    log_q = torch.log(torch.tensor([0.5, 0.25]))
    # corrected logits: row 0 = [1 - log .5, 0 - log .25], row 1 = [0 - log .5, 1 - log .25]
    l0 = -(1 - math.log(.5)) + math.log(math.exp(1 - math.log(.5)) + math.exp(-math.log(.25)))
    l1 = -(1 - math.log(.25)) + math.log(math.exp(-math.log(.5)) + math.exp(1 - math.log(.25)))
    assert float(sampled_softmax_loss(users, items, log_q, 1.0)) == pytest.approx((l0 + l1) / 2, rel=1e-6)
    plain = math.log(1 + math.exp(-1))  # no correction: both rows are log(1 + e^-1)
    assert float(sampled_softmax_loss(users, items, None, 1.0)) == pytest.approx(plain, rel=1e-6)
    # a uniform q shifts every logit equally: the same loss as no correction
    assert float(sampled_softmax_loss(users, items, torch.log(torch.tensor([.3, .3])), 1.0)) == pytest.approx(plain, rel=1e-6)
    # the same item in both rows: the other row is not a negative, each row's loss is 0
    assert float(sampled_softmax_loss(users, items, None, 1.0, item_keys=torch.tensor([7, 7]))) == pytest.approx(0.0, abs=1e-6)


def synthetic(tmp_path, n_groups=4, items_per_group=8, users_per_group=10, seed=0):
    """Users of group g like only items of category g; each item's content vector is near centre g."""
    rng = np.random.default_rng(seed)
    centres = np.eye(n_groups, 8, dtype=np.float32) * 3
    items = pd.DataFrame({"item_id": np.arange(n_groups * items_per_group),
                          "category": [f"c{i // items_per_group}" for i in range(n_groups * items_per_group)]})
    vectors = centres[np.arange(len(items)) // items_per_group] + rng.normal(scale=0.3, size=(len(items), 8)).astype(np.float32)
    rows = []
    for user in range(n_groups * users_per_group):
        group = user // users_per_group
        liked = rng.permutation(np.arange(group * items_per_group, (group + 1) * items_per_group))
        rows += [(user, int(i), 1.0, t) for t, i in enumerate(liked)]
        rows += [(user, int(i), 0.0, 100 + t) for t, i in enumerate(rng.choice(np.setdiff1d(items.item_id, liked), 3, replace=False))]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "label", "timestamp"]).merge(items, on="item_id")
    frame["gender"] = np.where(frame["user_id"] % 2 == 0, "F", "M")
    new_id = 1000
    new_vector = centres[1] + rng.normal(scale=0.3, size=8).astype(np.float32)
    path = tmp_path / "content.npz"
    np.savez(path, ids=np.append(items.item_id.to_numpy(), new_id).astype(str), vectors=np.vstack([vectors, new_vector]))
    spec = load_spec({"fields": [{"name": "user_id", "kind": "categorical"}, {"name": "gender", "kind": "categorical"},
                                 {"name": "item_id", "kind": "categorical"}, {"name": "category", "kind": "categorical"},
                                 {"name": "content", "kind": "vector", "path": str(path), "key_column": "item_id"}],
                      "text_cache_dir": str(tmp_path / "cache")})
    return frame, items, spec, new_id


def config(**overrides):
    base = dict(user_fields=["user_id", "gender"], item_fields=["item_id", "category", "content"], history_len=5,
                embedding_dim=8, hidden_units=[16], out_dim=16, temperature=0.1, epochs=15, batch_size=64, lr=1e-2,
                id_dropout=0.5, seed=0)
    return TwoTowerConfig(**{**base, **overrides})


def test_training_lowers_the_loss_and_ranks_a_held_out_positive_on_top(tmp_path):
    frame, items, spec, _ = synthetic(tmp_path)
    # hold out user 3's last positive (group 0)
    last = frame[(frame.user_id == 3) & (frame.label == 1)].sort_values("timestamp").iloc[-1]
    train = frame.drop(index=last.name)
    pipeline = FeaturePipeline(spec).fit(train)
    channel = TwoTowerChannel(pipeline, config()).fit(train, items)
    assert channel.losses[-1] < 0.7 * channel.losses[0]  # the floor is about log(same-group items in a batch)
    seen = train[(train.user_id == 3)].item_id.tolist()
    (found, _), = channel.recall([3], n=3, exclude=[seen])
    assert int(last.item_id) in found.tolist()
    # the index (exact by default) agrees with the dense scores
    dense = channel.score([3])[0]
    mask = np.isin(channel.item_ids, seen)
    assert found[0] == channel.item_ids[np.argmax(np.where(mask, -np.inf, dense))]


def test_a_freshly_added_cold_item_is_recalled_through_its_content(tmp_path):
    frame, items, spec, new_id = synthetic(tmp_path)
    pipeline = FeaturePipeline(spec).fit(frame)
    channel = TwoTowerChannel(pipeline, config()).fit(frame, items)
    assert new_id not in channel.item_ids
    vectors = channel.add_items(pd.DataFrame({"item_id": [new_id], "category": ["c1"]}))
    assert vectors.shape == (1, 16) and channel.index.vector(new_id).tolist() == vectors[0].tolist()
    group1_user, group3_user = 15, 35  # users 10..19 like category c1
    seen = [frame[frame.user_id == u].item_id.tolist() for u in (group1_user, group3_user)]
    (found1, _), (found3, _) = channel.recall([group1_user, group3_user], n=3, exclude=seen)
    assert found1[0] == new_id  # the only c1 item user 15 has not seen
    assert new_id not in found3.tolist()
    # a user unknown to training, with a request-time history of c1 items, gets it too
    # (6 = the new item and the five c1 items outside that history)
    (found, _), = channel.recall([999], n=6, exclude=[[8, 9, 10]], histories={999: [8, 9, 10]})
    assert new_id in found.tolist()


def test_save_load_round_trip(tmp_path):
    frame, items, spec, new_id = synthetic(tmp_path)
    pipeline = FeaturePipeline(spec).fit(frame)
    channel = TwoTowerChannel(pipeline, config(epochs=2)).fit(frame, items)
    channel.add_items(pd.DataFrame({"item_id": [new_id], "category": ["c1"]}))
    channel.save(tmp_path / "tt")
    loaded = TwoTowerChannel.load(tmp_path / "tt", pipeline)
    users = [0, 15, 999]
    assert np.allclose(loaded.score(users), channel.score(users))
    assert [i.tolist() for i, _ in loaded.recall(users, 5)] == [i.tolist() for i, _ in channel.recall(users, 5)]
    assert new_id in loaded.item_ids.tolist()


def test_unknown_field_is_refused(tmp_path):
    frame, items, spec, _ = synthetic(tmp_path)
    pipeline = FeaturePipeline(spec).fit(frame)
    with pytest.raises(ValueError, match=r"fields \['title'\] are not in the feature pipeline"):
        TwoTowerChannel(pipeline, config(item_fields=["item_id", "title"]))
