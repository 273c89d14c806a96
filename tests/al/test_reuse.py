"""al/reuse.py: init_from reuses the stages before the first query, whatever the query settings say."""
from core.config import load_config


def test_init_from_reuses_the_stages_before_the_first_query_whatever_mc_passes_says(tmp_path):
    from al.reuse import shared_stages
    ours = load_config("demo").to_dict()
    theirs = load_config("demo", ["query.mc_passes=4"]).to_dict()
    assert shared_stages(ours, theirs, tmp_path) == ["teacher", "student"]  # query1 used the query settings
    assert shared_stages(ours, load_config("demo").to_dict(), tmp_path) == ["teacher", "student", "query1", "query2"]
