"""The record of processing activities (GDPR art. 30(1)) rendered as Markdown from the policy files.

Everything in it comes from `policies/`: purposes and legal bases, data categories (Fides taxonomy), datasets,
recipients, transfers outside the EU with their safeguards, and the planned erasure time limits (30(1)(f)).
"""

from __future__ import annotations

from functools import cache

from fideslang.default_taxonomy import DEFAULT_TAXONOMY

from pipelines.policy.models import Policy, RetentionRule, duration_parts
from pipelines.retention.columns import column_groups
from pipelines.retention.until import WORDING_FR as UNTIL_WORDING_FR

END_ACTIONS = {"delete": "suppression", "anonymise": "anonymisation irréversible"}


@cache
def _category_names() -> dict[str, str]:
    return {c.fides_key: c.name or c.fides_key for c in DEFAULT_TAXONOMY.data_category}


def human_duration(value: str) -> str:
    years, months, days = duration_parts(value)
    parts = [f"{n} {unit}" for n, unit in ((years, "an(s)"), (months, "mois"), (days, "jour(s)")) if n]
    return " ".join(parts) or "aucune"


def _retention_line(policy: Policy, rule: RetentionRule) -> str:
    clock = policy.clocks[rule.clock].description
    active = ("jusqu'à l'événement" if rule.active == "P0D" else human_duration(rule.active))
    return (f"base active: {active} (point de départ: {clock}); archive intermédiaire: "
            f"{human_duration(rule.archive)}; puis {END_ACTIONS[rule.end_action]}. Source: {rule.legal_source}.")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_register(policy: Policy) -> str:
    """Markdown register: one section per purpose, then the recipients, transfers and erasure time limits."""
    c = policy.purposes_file.controller
    names = _category_names()
    lines = [
        "# Registre des activités de traitement (RGPD art. 30)",
        "",
        f"Responsable de traitement: {c.name}, {c.identifier}, {c.address}.  ",
        f"Exercice des droits: {c.rights_contact}.  ",
        f"Version de la politique: {policy.version_label}, en vigueur le {policy.effective_date.isoformat()}.",
        "",
        "Document généré à partir de `policies/` (ne pas modifier à la main).",
        "",
    ]
    for i, purpose in enumerate(policy.purposes, 1):
        basis = purpose.legal_basis
        datasets = [d for d in policy.datasets if purpose.key in d.purposes]
        recipients = [r for r in policy.recipients if any(x.purpose == purpose.key for x in r.receives)]
        lines += [
            f"## {i}. {purpose.name}",
            "",
            f"- Clé: `{purpose.key}`",
            f"- Base légale: art. {basis.article_6}" + (f" et art. {basis.article_9}" if basis.article_9 else "")
            + f" — {basis.detail}",
            "- Catégories de données: " + ", ".join(f"{names.get(k, k)} (`{k}`)" for k in purpose.data_categories),
            "- Personnes concernées: " + (", ".join(sorted({s.type for d in datasets for s in d.subjects})) or "—"),
            "- Jeux de données: " + (", ".join(f"`{d.system}.{d.name}`" for d in datasets) or "—"),
            "- Destinataires: " + (", ".join(r.name for r in recipients) or "services habilités de la SEM"),
            f"- Conservation: {_retention_line(policy, purpose.retention)}",
        ]
        if purpose.retention.why:
            lines.append(f"  - Justification: {purpose.retention.why}")
        for dataset, rule in purpose.dataset_rules.items():
            lines.append(f"- Conservation pour `{dataset}`: {_retention_line(policy, rule)}")
            if rule.why:
                lines.append(f"  - Justification: {rule.why}")
        lines.append("")
    lines += ["## Destinataires", "", "| Destinataire | Nature | Pays | Données reçues (finalité: jeu de données) |",
              "|---|---|---|---|"]
    for r in policy.recipients:
        received = "; ".join(f"{x.purpose}: {x.dataset} ({', '.join(x.columns)})"
                             + (f" si {' et '.join(c.describe() for c in x.where)}" if x.where else "")
                             for x in r.receives)
        lines.append(f"| {_cell(r.name)} | {r.kind} | {r.country} | {_cell(received) or 'sur réquisition'} |")
    lines += ["", "## Transferts hors Union européenne", "",
              "| Destinataire | Pays | Décision d'adéquation | Mécanisme | Garanties |", "|---|---|---|---|---|"]
    for r in policy.recipients:
        if r.transfer:
            t = r.transfer
            lines.append(f"| {_cell(r.name)} | {t.country} | {'oui' if t.adequacy_decision else 'non'} | "
                         f"{_cell(t.mechanism)} | {_cell('; '.join(t.safeguards))} |")
    lines += ["", "## Délais prévus pour l'effacement (art. 30(1)(f))", "",
              "| Finalité | Jeu de données | Base active | Archive intermédiaire | Fin |", "|---|---|---|---|---|"]
    for purpose in policy.purposes:
        for d in policy.datasets:
            if purpose.key in d.purposes and d.subjects:
                rule = policy.rule_for(purpose.key, d.name)
                lines.append(f"| {purpose.key} | {d.name} | {human_duration(rule.active)} après "
                             f"{_cell(policy.clocks[rule.clock].description)} | {human_duration(rule.archive)} | "
                             f"{END_ACTIONS[rule.end_action]} |")
    lines += ["", f"Durées comptées en jours entiers: {UNTIL_WORDING_FR}.", "",
              "Une procédure judiciaire en cours (dossier contentieux ouvert) ou une limitation (art. 18) suspend "
              "l'effacement de toutes les données de la personne, dans tous les systèmes (liens d'identité).", "",
              "### Conservation par colonne", "",
              "Dans un enregistrement conservé, chaque colonne ne vit que tant qu'une des finalités qu'elle sert est "
              "en base active ou en archive: passé ce délai, elle est vidée dans la source et la base active "
              "(déplacée en archive intermédiaire pendant la durée d'archive de ses finalités, puis effacée).", "",
              "| Jeu de données | Colonnes | Conservées tant que dure l'une de |", "|---|---|---|"]
    lines += [f"| {g.dataset} | {', '.join(g.columns)} | {', '.join(g.purposes)} |" for g in column_groups(policy)]
    lines += ["", "### Finalités par ligne", "",
              "Une ligne qui remplit une condition ne sert que les finalités nommées pour elle, et n'est conservée "
              "que selon leurs règles; les autres lignes du jeu de données servent les autres finalités.", "",
              "| Jeu de données | Lignes | Finalités servies | Motif |", "|---|---|---|---|"]
    lines += [f"| {d.name} | {_cell(' et '.join(c.describe() for c in e.where))} | {', '.join(e.purposes)} | "
              f"{_cell(e.description)} |" for d in policy.datasets for e in d.row_purposes]
    lines += ["",
              "## Mesures de sécurité (art. 32)", ""] + [f"- {m}" for m in c.security_measures] + [""]
    return "\n".join(lines)
