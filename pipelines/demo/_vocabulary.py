"""Vocabularies of the demo generator: fixed French reference lists plus names sampled once from Faker fr_FR.

Faker is only used here, a few thousand calls at most, to fill arrays; the generator then draws rows from
these arrays with numpy indices. Cities and establishments are real so postcodes, coordinates and schools
agree with each other (Faker's fr_FR cities are invented).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import pyarrow as pa
from faker import Faker

# (name, kind, street, postal_code, city)
ESTABLISHMENTS: tuple[tuple[str, str, str, str, str], ...] = (
    ("Sorbonne Université", "university", "21 rue de l'École de Médecine", "75006", "Paris"),
    ("Université Paris Cité", "university", "85 boulevard Saint-Germain", "75006", "Paris"),
    ("Université Paris 1 Panthéon-Sorbonne", "university", "12 place du Panthéon", "75005", "Paris"),
    ("Université Paris-Panthéon-Assas", "university", "12 place du Panthéon", "75005", "Paris"),
    ("Université Sorbonne Nouvelle", "university", "8 avenue de Saint-Mandé", "75012", "Paris"),
    ("Université Paris-Saclay", "university", "3 rue Joliot-Curie", "91190", "Gif-sur-Yvette"),
    ("Université Paris Nanterre", "university", "200 avenue de la République", "92000", "Nanterre"),
    ("Université Paris-Est Créteil", "university", "61 avenue du Général de Gaulle", "94000", "Créteil"),
    ("Université Sorbonne Paris Nord", "university", "99 avenue Jean-Baptiste Clément", "93430",
     "Villetaneuse"),
    ("CY Cergy Paris Université", "university", "33 boulevard du Port", "95000", "Cergy"),
    ("Université de Versailles Saint-Quentin-en-Yvelines", "university", "55 avenue de Paris", "78000",
     "Versailles"),
    ("Université Claude Bernard Lyon 1", "university", "43 boulevard du 11 Novembre 1918", "69100",
     "Villeurbanne"),
    ("Université Lumière Lyon 2", "university", "86 rue Pasteur", "69007", "Lyon"),
    ("Université Jean Moulin Lyon 3", "university", "1C avenue des Frères Lumière", "69008", "Lyon"),
    ("Université Grenoble Alpes", "university", "621 avenue Centrale", "38400", "Saint-Martin-d'Hères"),
    ("Aix-Marseille Université", "university", "58 boulevard Charles Livon", "13007", "Marseille"),
    ("Université Côte d'Azur", "university", "28 avenue Valrose", "06100", "Nice"),
    ("Université de Montpellier", "university", "163 rue Auguste Broussonnet", "34090", "Montpellier"),
    ("Université Paul-Valéry Montpellier 3", "university", "route de Mende", "34199", "Montpellier"),
    ("Université Toulouse Capitole", "university", "2 rue du Doyen-Gabriel-Marty", "31042", "Toulouse"),
    ("Université Toulouse III - Paul Sabatier", "university", "118 route de Narbonne", "31062", "Toulouse"),
    ("Université de Bordeaux", "university", "35 place Pey Berland", "33000", "Bordeaux"),
    ("Université Bordeaux Montaigne", "university", "19 esplanade des Antilles", "33600", "Pessac"),
    ("Nantes Université", "university", "1 quai de Tourville", "44000", "Nantes"),
    ("Université de Rennes", "university", "2 rue du Thabor", "35000", "Rennes"),
    ("Université Rennes 2", "university", "place du Recteur Henri Le Moal", "35000", "Rennes"),
    ("Université de Lille", "university", "42 rue Paul Duez", "59000", "Lille"),
    ("Université de Strasbourg", "university", "4 rue Blaise Pascal", "67000", "Strasbourg"),
    ("Université de Lorraine", "university", "34 cours Léopold", "54000", "Nancy"),
    ("Université de Poitiers", "university", "15 rue de l'Hôtel Dieu", "86000", "Poitiers"),
    ("Université de Tours", "university", "60 rue du Plat d'Étain", "37000", "Tours"),
    ("Université d'Orléans", "university", "château de la Source", "45100", "Orléans"),
    ("Université Clermont Auvergne", "university", "49 boulevard François-Mitterrand", "63000",
     "Clermont-Ferrand"),
    ("Université de Caen Normandie", "university", "esplanade de la Paix", "14000", "Caen"),
    ("Université de Rouen Normandie", "university", "1 rue Thomas Becket", "76130", "Mont-Saint-Aignan"),
    ("Université d'Angers", "university", "40 rue de Rennes", "49000", "Angers"),
    ("Université de Bourgogne", "university", "Maison de l'Université, esplanade Erasme", "21000", "Dijon"),
    ("Université de Reims Champagne-Ardenne", "university", "9 boulevard de la Paix", "51100", "Reims"),
    ("Université de Limoges", "university", "33 rue François Mitterrand", "87000", "Limoges"),
    ("Université de Perpignan Via Domitia", "university", "52 avenue Paul Alduy", "66100", "Perpignan"),
    ("Université de Pau et des Pays de l'Adour", "university", "avenue de l'Université", "64000", "Pau"),
    ("Université de Franche-Comté", "university", "1 rue Claude Goudimel", "25000", "Besançon"),
    ("Université Savoie Mont Blanc", "university", "27 rue Marcoz", "73000", "Chambéry"),
    ("Sciences Po Paris", "school", "27 rue Saint-Guillaume", "75007", "Paris"),
    ("École Polytechnique", "school", "route de Saclay", "91120", "Palaiseau"),
    ("ESSEC Business School", "school", "3 avenue Bernard Hirsch", "95000", "Cergy"),
    ("HEC Paris", "school", "1 rue de la Libération", "78350", "Jouy-en-Josas"),
    ("ESCP Business School", "school", "79 avenue de la République", "75011", "Paris"),
    ("emlyon business school", "school", "144 avenue Jean Jaurès", "69007", "Lyon"),
    ("EDHEC Business School", "school", "24 avenue Gustave Delory", "59100", "Roubaix"),
    ("KEDGE Business School", "school", "680 cours de la Libération", "33405", "Talence"),
    ("INSA Lyon", "school", "20 avenue Albert Einstein", "69100", "Villeurbanne"),
    ("INSA Toulouse", "school", "135 avenue de Rangueil", "31400", "Toulouse"),
    ("Centrale Nantes", "school", "1 rue de la Noë", "44300", "Nantes"),
    ("École normale supérieure - PSL", "school", "45 rue d'Ulm", "75005", "Paris"),
    ("Arts et Métiers", "school", "151 boulevard de l'Hôpital", "75013", "Paris"),
    ("IUT de Bordeaux", "school", "15 rue Naudet", "33175", "Gradignan"),
    ("École du Louvre", "school", "place du Carrousel", "75001", "Paris"),
    ("IFSI de la Pitié-Salpêtrière", "school", "47 boulevard de l'Hôpital", "75013", "Paris"),
    ("Lycée Henri-IV (classes préparatoires)", "school", "23 rue Clovis", "75005", "Paris"),
    ("Beaux-Arts de Paris", "school", "14 rue Bonaparte", "75006", "Paris"),
    ("Toulouse School of Economics", "school", "1 esplanade de l'Université", "31080", "Toulouse"),
)

# (city, postal_code, latitude, longitude, weight): where students live.
CITIES: tuple[tuple[str, str, float, float, int], ...] = (
    ("Paris", "75005", 48.8462, 2.3447, 14), ("Paris", "75013", 48.8322, 2.3561, 10),
    ("Paris", "75011", 48.8590, 2.3800, 8), ("Paris", "75018", 48.8925, 2.3444, 7),
    ("Lyon", "69007", 45.7456, 4.8420, 7), ("Villeurbanne", "69100", 45.7719, 4.8902, 4),
    ("Marseille", "13005", 43.2926, 5.3964, 5), ("Toulouse", "31400", 43.5690, 1.4632, 6),
    ("Bordeaux", "33000", 44.8378, -0.5792, 6), ("Pessac", "33600", 44.8067, -0.6311, 2),
    ("Lille", "59000", 50.6292, 3.0573, 6), ("Nantes", "44000", 47.2184, -1.5536, 5),
    ("Rennes", "35000", 48.1173, -1.6778, 5), ("Montpellier", "34090", 43.6327, 3.8662, 6),
    ("Strasbourg", "67000", 48.5734, 7.7521, 5), ("Grenoble", "38000", 45.1885, 5.7245, 5),
    ("Saint-Martin-d'Hères", "38400", 45.1672, 5.7653, 2), ("Nice", "06100", 43.7221, 7.2665, 4),
    ("Nancy", "54000", 48.6921, 6.1844, 3), ("Dijon", "21000", 47.3220, 5.0415, 3),
    ("Tours", "37000", 47.3941, 0.6848, 3), ("Poitiers", "86000", 46.5802, 0.3404, 3),
    ("Angers", "49000", 47.4784, -0.5632, 3), ("Caen", "14000", 49.1829, -0.3707, 3),
    ("Rouen", "76000", 49.4432, 1.0999, 3), ("Reims", "51100", 49.2583, 4.0317, 2),
    ("Clermont-Ferrand", "63000", 45.7772, 3.0870, 3), ("Limoges", "87000", 45.8336, 1.2611, 2),
    ("Besançon", "25000", 47.2378, 6.0241, 2), ("Orléans", "45000", 47.9030, 1.9093, 2),
    ("Brest", "29200", 48.3904, -4.4861, 2), ("Le Mans", "72000", 48.0061, 0.1996, 2),
    ("Amiens", "80000", 49.8941, 2.2958, 2), ("Perpignan", "66000", 42.6887, 2.8948, 1),
    ("Pau", "64000", 43.2951, -0.3708, 1), ("Chambéry", "73000", 45.5646, 5.9178, 1),
    ("Créteil", "94000", 48.7904, 2.4556, 2), ("Nanterre", "92000", 48.8924, 2.2071, 2),
    ("Cergy", "95000", 49.0364, 2.0761, 2), ("Versailles", "78000", 48.8049, 2.1204, 2),
    ("Aix-en-Provence", "13100", 43.5297, 5.4474, 3), ("Monaco", "98000", 43.7384, 7.4246, 1),
)

EMAIL_DOMAINS: tuple[tuple[str, int], ...] = (
    ("gmail.com", 45), ("hotmail.fr", 12), ("outlook.fr", 8), ("yahoo.fr", 7), ("orange.fr", 7),
    ("free.fr", 5), ("laposte.net", 5), ("sfr.fr", 3), ("icloud.com", 5), ("etu.univ-lyon1.fr", 1),
    ("etu.u-bordeaux.fr", 1), ("etu.univ-paris1.fr", 1),
)

PRODUCTS = ("SEM Essentielle", "SEM Confort", "SEM Intégrale", "SEM Étudiant International")

# (act_code, label, base amount in EUR, professional prefix, weight)
ACTS: tuple[tuple[str, str, float, str, int], ...] = (
    ("G", "Consultation médecin généraliste", 30.0, "Dr", 30),
    ("CS", "Consultation spécialiste", 50.0, "Dr", 10),
    ("PHA", "Médicaments remboursables", 24.0, "Pharmacie", 25),
    ("PSY", "Séance de psychologue", 50.0, "Cabinet", 5),
    ("KINE", "Séance de kinésithérapie", 18.0, "Cabinet", 6),
    ("SDE", "Soins dentaires conservateurs", 60.0, "Dr", 6),
    ("OPT", "Verres et monture", 180.0, "Optique", 4),
    ("LAB", "Analyses de biologie médicale", 35.0, "Laboratoire", 8),
    ("RAD", "Radiologie", 45.0, "Centre d'imagerie", 3),
    ("FJH", "Forfait journalier hospitalier", 20.0, "Centre hospitalier", 2),
    ("CONTR", "Contraception", 15.0, "Pharmacie", 1),
)

# (kind, subjects, bodies): short French texts without identifiers.
INTERACTIONS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("request", ("Demande d'attestation", "Changement de RIB", "Carte de tiers payant", "Ajout d'un ayant droit"),
     ("Merci de m'envoyer le document demandé.", "Je souhaite mettre à jour mon dossier.",
      "Pouvez-vous me rappeler à ce sujet ?")),
    ("complaint", ("Remboursement non reçu", "Délai de traitement", "Erreur de prélèvement", "Accueil téléphonique"),
     ("Je conteste le montant remboursé.", "Cela fait plusieurs semaines que j'attends une réponse.",
      "Le prélèvement a été effectué deux fois.")),
    ("correspondence", ("Courrier de résiliation", "Justificatif de scolarité", "Relevé de prestations",
                        "Changement d'adresse"),
     ("Veuillez trouver ci-joint le justificatif.", "Suite à notre échange téléphonique, voici les pièces.",
      "Je vous informe de mon changement de situation.")),
    ("documentation_request", ("Tableau des garanties", "Conditions générales", "Offre Étudiant International",
                               "Guide du tiers payant"),
     ("Je souhaite recevoir la documentation.", "Pouvez-vous m'envoyer les garanties détaillées ?",
      "Merci de m'adresser la brochure.")),
    ("comment", ("Avis sur l'espace adhérent", "Suggestion", "Remerciements", "Application mobile"),
     ("Le site est clair et rapide.", "Il serait utile de pouvoir télécharger les décomptes.",
      "Merci pour votre réactivité.")),
)

SURVEY_COMMENTS = (
    "Très satisfait du service.", "Remboursements rapides.", "Conseiller très aimable.",
    "Délais un peu longs.", "Le site pourrait être plus simple.", "Bon rapport qualité-prix.",
    "Difficile de joindre le service client.", "Rien à signaler.",
)

LITIGATION_SUBJECTS = (
    "Contestation d'un refus de prise en charge", "Recouvrement de cotisations impayées",
    "Contestation d'une radiation", "Litige sur un remboursement d'optique", "Fausse déclaration",
)

TERMINATION_REASONS = ("end_of_studies", "member_request", "moved_abroad", "joined_employer_plan")
RADIATION_REASONS = ("unpaid_contributions", "false_declaration")

SITE = "https://www.mutuelle-sem.fr"
URL_PATHS: tuple[tuple[str, int], ...] = (
    ("/", 20), ("/adhesion", 8), ("/adhesion/devis", 6), ("/garanties/essentielle", 5),
    ("/garanties/confort", 5), ("/garanties/integrale", 3), ("/garanties/etudiant-international", 3),
    ("/espace-adherent", 10), ("/espace-adherent/remboursements", 8), ("/espace-adherent/attestation", 4),
    ("/espace-adherent/documents", 3), ("/contact", 4), ("/faq", 4), ("/blog/sante-etudiante", 3),
    ("/blog/bien-choisir-sa-mutuelle", 2), ("/blog/partir-etudier-a-l-etranger", 2),
    ("/politique-de-confidentialite", 1), ("/mentions-legales", 1),
)
REFERRERS: tuple[tuple[str | None, int], ...] = (
    (None, 40), ("https://www.google.fr/", 30), ("https://www.google.com/", 6), ("https://www.bing.com/", 4),
    ("https://www.qwant.com/", 2), ("https://www.instagram.com/", 5), ("https://www.facebook.com/", 3),
    ("https://www.tiktok.com/", 3), ("https://www.etudiant.gouv.fr/", 3), ("https://ent.univ-lyon1.fr/", 2),
    ("https://www.messervices.etudiant.gouv.fr/", 2),
)
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 "
    "Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 "
    "Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; SM-A546B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 "
    "Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 "
    "Mobile Safari/537.36",
    "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
    "Mobile/15E148 Safari/604.1",
)
# First octets of French consumer ISP ranges (Orange, SFR, Free, Bouygues), for realistic-looking IPs.
IP_FIRST_OCTETS = (2, 78, 82, 86, 88, 90, 92, 109, 176, 77, 37, 31)

CAMPAIGN_KINDS = ("loyalty", "prospecting", "survey", "product_test")
CAMPAIGN_LABELS = ("Fidélité", "Rentrée étudiante", "Baromètre satisfaction", "Test appli mobile")
CAMPAIGN_CHANNELS = ("email", "sms", "phone", "mail")
LEAD_SOURCES: tuple[tuple[str, int], ...] = (("salon", 25), ("website", 45), ("partner_school", 20),
                                             ("referral", 10))


def slug(text: str) -> str:
    """ASCII, lower-case, no spaces or apostrophes: the shape names take in e-mail addresses."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in ascii_text.lower() if ch.isalnum() or ch == "-")


@dataclass(frozen=True)
class Vocabulary:
    """Arrow arrays the generator indexes into; every name has its e-mail slug at the same index."""

    first_male: pa.Array
    first_male_slug: pa.Array
    first_female: pa.Array
    first_female_slug: pa.Array
    last: pa.Array
    last_slug: pa.Array
    streets: pa.Array


def sample_vocabulary(seed: int, streets: int = 2000) -> Vocabulary:
    """Name lists of the fr_FR locale, and street names sampled once with a seeded Faker."""
    fake = Faker("fr_FR")
    fake.seed_instance(seed)
    person = next(p for p in fake.get_providers() if hasattr(p, "first_names_male"))
    male, female, last = (
        sorted(set(person.first_names_male)), sorted(set(person.first_names_female)), sorted(set(person.last_names))
    )
    street_names = sorted({fake.street_name() for _ in range(streets)})
    return Vocabulary(
        first_male=pa.array(male), first_male_slug=pa.array([slug(n) for n in male]),
        first_female=pa.array(female), first_female_slug=pa.array([slug(n) for n in female]),
        last=pa.array(last), last_slug=pa.array([slug(n) for n in last]),
        streets=pa.array(street_names),
    )
