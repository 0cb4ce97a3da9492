"""What the Dagster UI shows: every asset documented, owned, typed and grouped by pipeline stage."""

from pipelines.definitions import defs

STAGE_GROUPS = {"sources", "identity", "retention", "rights", "pseudonymised", "compliance"}


def test_every_asset_has_a_description_an_owner_kinds_and_a_stage_group():
    problems = []
    for node in defs.resolve_asset_graph().asset_nodes:
        name = node.key.to_user_string()
        if not (node.description or "").strip():
            problems.append(f"{name}: no description")
        if not node.owners:
            problems.append(f"{name}: no owner")
        if not node.kinds:
            problems.append(f"{name}: no kinds")
        if node.group_name not in STAGE_GROUPS:
            problems.append(f"{name}: group {node.group_name!r} is not a stage group")
    assert not problems, "\n".join(problems)


def test_every_asset_check_is_described():
    undescribed = [
        node.key.to_user_string()
        for node in defs.resolve_asset_graph().asset_check_nodes
        if not (node.description or "").strip()
    ]
    assert not undescribed, undescribed
