"""prenom.nom derivation: a table of real French and foreign names."""

import pytest

from mailstack.accounts.identity import IdentityError, base_login, name_part, normalize_login

NAMES = [
    # French: accents, compound first names, particles, apostrophes
    ("Jean-Pierre", "Dupont", "jean-pierre.dupont"),
    ("Éloïse", "D'Hérouville", "eloise.dherouville"),
    ("Hélène", "Lefèvre", "helene.lefevre"),
    ("François", "Bérégovoy", "francois.beregovoy"),
    ("Anaïs", "Noël", "anais.noel"),
    ("Marie Thérèse", "de La Tour d'Auvergne", "marie-therese.de-la-tour-dauvergne"),
    ("Jean - Baptiste", "Le  Gall", "jean-baptiste.le-gall"),
    ("Zoé", "L’Hermitte", "zoe.lhermitte"),
    ("Maëlle", "Saint_Just", "maelle.saint-just"),
    ("J.-P.", "Sartre", "j-p.sartre"),
    ("ANNE-SOPHIE", "MÜLLER", "anne-sophie.muller"),
    ("Œdipe", "Cœurdevey", "oedipe.coeurdevey"),
    ("Lætitia", "Casta", "laetitia.casta"),
    ("Célestin", "Çelik", "celestin.celik"),
    ("Ève", "Ô'Brien", "eve.obrien"),
    ("--Luc--", "..Besson..", "luc.besson"),
    # foreign letters that do not decompose
    ("Łukasz", "Wałęsa", "lukasz.walesa"),
    ("Søren", "Kierkegaard", "soren.kierkegaard"),
    ("Þórr", "Guðmundsdóttir", "thorr.gudmundsdottir"),
    ("Đorđe", "Đoković", "dorde.dokovic"),
    ("Günther", "Straße", "gunther.strasse"),
    ("Nguyễn", "Thị Minh Khai", "nguyen.thi-minh-khai"),
    ("José María", "García Márquez", "jose-maria.garcia-marquez"),
    ("Siobhán", "O’Sullivan", "siobhan.osullivan"),
    ("İsmail", "Kılıç", "ismail.kilic"),
    ("Ana", "Ñúñez", "ana.nunez"),
    ("Ærøskøbing", "Ålborg", "aeroskobing.alborg"),
    ("Jean\u2011Luc", "Godard", "jean-luc.godard"),  # non-breaking hyphen
    ("Émile\u00a0Zola", "Écrivain", "emile-zola.ecrivain"),  # no-break space
    ("Chloé (Cloé)", "Dupré", "chloe-cloe.dupre"),
    ("Jean - ! - Paul", "Sartre", "jean-paul.sartre"),
    ("ﬁlippo", "Inzaghi", "filippo.inzaghi"),  # ligature fi
    ("Ahmed", "Ben Ali 2", "ahmed.ben-ali-2"),
]


@pytest.mark.parametrize("prenom,nom,login", NAMES)
def test_login_from_names(prenom: str, nom: str, login: str) -> None:
    assert base_login(prenom, nom) == login


@pytest.mark.parametrize("name", ["", "   ", "'''", "-.-_", "李", "Владимир", "!!"])
def test_empty_part_is_an_error(name: str) -> None:
    with pytest.raises(IdentityError, match="empty login part"):
        name_part(name)


def test_error_names_which_part() -> None:
    with pytest.raises(IdentityError, match="family name"):
        base_login("Jean", "李")
    with pytest.raises(IdentityError, match="first name"):
        base_login("李", "Dupont")


def test_too_long() -> None:
    with pytest.raises(IdentityError, match="longer than"):
        base_login("A" * 40, "B" * 40)


def test_normalize_login_accepts_case_and_full_address() -> None:
    domains = ["ac-normandie.fr"]
    assert normalize_login("Jean.Dupont", domains) == ("jean.dupont", None)
    assert normalize_login(" JEAN.DUPONT@AC-NORMANDIE.FR ", domains) == ("jean.dupont", "ac-normandie.fr")
    with pytest.raises(IdentityError):
        normalize_login("jean.dupont@example.com", domains)
