

def test_folds_hold_out_disjoint_samples():
    """K-fold averaging: fold f holds out block f of one seeded permutation, so folds are
    disjoint (while K x share <= 1) and fold 0 is the single split."""
    from oes_mri.physics.holdout import split_mask
    from oes_mri.physics.masks import fastmri_mask

    m = fastmri_mask((64, 96), 4, 0.08, seed=0).mask
    splits = [split_mask(m, (64, 96), 0.2, "lines", seed=5, fold=f) for f in range(4)]
    assert split_mask(m, (64, 96), 0.2, "lines", seed=5).val.equal(splits[0].val)
    for a in range(4):
        for b in range(a + 1, 4):
            assert not (splits[a].val * splits[b].val).any()
    assert all(int(s.val.sum()) == int(splits[0].val.sum()) > 0 for s in splits)
