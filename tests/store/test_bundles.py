from wav2genre_cache.store.bundles import resolve_bundle_dir


def test_a_run_folder_means_its_best_bundle(tmp_path):
    (tmp_path / "best").mkdir()
    assert resolve_bundle_dir(tmp_path) == tmp_path  # best/ holds no bundle yet
    (tmp_path / "best" / "bundle.json").write_text("{}")
    assert resolve_bundle_dir(tmp_path) == tmp_path / "best"
    assert resolve_bundle_dir(tmp_path / "best") == tmp_path / "best"
    assert resolve_bundle_dir(str(tmp_path / "bundles" / "svm")) == tmp_path / "bundles" / "svm"
