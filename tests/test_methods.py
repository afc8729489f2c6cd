"""lcmat.methods: the one registry and option parser the CLI, the experiment runner and the
DeepCore adapter share."""
import pytest

import lcmat
from lcmat import methods, selectors
from lcmat.methods import METHODS, MethodSpec, canonical_method, get_method, own_options, parse_methods


def test_the_registry_is_one_object_wherever_it_is_imported_from():
    assert selectors.METHODS is METHODS is lcmat.METHODS
    assert selectors.get_method is get_method is lcmat.get_method


@pytest.mark.parametrize("spelling,name", [("LCMat-S", "lcmat"), ("lcmat_s", "lcmat"), ("kCenterGreedy", "kcenter"),
                                           ("k-center", "kcenter"), ("Least-Confidence", "least_confidence"),
                                           ("random", "uniform"), (" FDMat ", "fdmat")])
def test_spellings_map_to_one_canonical_name(spelling, name):
    assert canonical_method(spelling) == name
    assert type(get_method(spelling)).name == name


def test_an_unknown_name_is_refused_naming_the_argument():
    with pytest.raises(ValueError, match="^method: unknown method 'nope'"):
        get_method("nope")
    with pytest.raises(ValueError, match="^methods: unknown method 'nope'.*or 'all'"):
        parse_methods("uniform,nope")


def test_own_options_exclude_the_shared_ones():
    assert "rho" in own_options("lcmat") and "max_memory" in own_options("lcmat")
    assert not set(own_options("lcmat")) & methods.COMMON_OPTIONS


def test_option_text_is_converted_to_the_default_type():
    spec, = parse_methods(["lcmat:rho=1:num_coords=50:weights=true:max_memory=1e9"])
    assert spec == MethodSpec("lcmat", {"rho": 1.0, "num_coords": 50, "weights": True, "max_memory": 1e9})
    assert get_method("lcmat", **spec.options).max_memory == 10 ** 9
    spec, = parse_methods(["lcmat:rho=auto"])
    assert spec.options == {"rho": "auto"}
