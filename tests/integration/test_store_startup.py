"""The start-up reads of the ``Store`` contract, run on both adapters: every
vehicle at once, and each unit's newest position across monthly partitions."""

from __future__ import annotations

from datetime import timedelta

from tracker.store import Store, Unit, User

from .test_store_contract import SECOND, T0, fix


async def test_all_vehicles_is_every_page_of_list_vehicles(store: Store) -> None:
    assert await store.all_vehicles() == []
    await store.put_user(User("amy", "Amy", "recovery", T0))
    await store.put_user(User("bob", "Bob", "recovery", T0))
    await store.put_vehicle(
        "v2",
        plate="KDA 123A",
        vin="JTDBR32E720000001",
        loan_ref="L-2",
        units=[Unit("u3", "v2", "battery", 172_800), Unit("u2", "v2")],
        rules={"long_stay_days": 7, "margin_m": 50.5},
        loan_state="recovery",
    )
    await store.put_vehicle("v1", plate=None, vin=None, loan_ref=None, units=[Unit("u1", "v1")])
    await store.put_vehicle("V0", plate=None, vin=None, loan_ref=None, units=[])
    assert await store.set_assignees("v2", ["bob", "amy"])

    paged = []
    after = None
    while page := await store.list_vehicles(after=after, limit=1):
        paged += page
        after = page[-1].vehicle_id
    everything = await store.all_vehicles()
    assert everything == paged
    assert [v.vehicle_id for v in everything] == ["V0", "v1", "v2"]
    v2 = everything[2]
    assert v2.units == (Unit("u2", "v2"), Unit("u3", "v2", "battery", 172_800))
    assert v2.rules == {"long_stay_days": 7, "margin_m": 50.5}
    assert (v2.loan_state, v2.assignees) == ("recovery", ("amy", "bob"))
    assert everything[0].rules == {}
    everything[0].rules["x"] = 1  # each vehicle has a dict of its own
    assert everything[1].rules == {}


async def test_latest_looks_in_older_months_for_units_quiet_lately(store: Store) -> None:
    await store.put_vehicle(
        "v1",
        plate=None,
        vin=None,
        loan_ref=None,
        units=[Unit(u, "v1") for u in ("u1", "u2", "u3", "u4")],
    )
    march, april, may = T0 - timedelta(days=60), T0 - timedelta(days=30), T0
    u1 = fix("u1", may, speed_kmh=12.3)  # newest month
    u2 = fix("u2", march + SECOND)  # quiet since March: two months back
    u4 = fix("u4", april, attributes={"ignition": True})
    await store.insert_positions(
        [u1, fix("u1", april), fix("u1", march), u2, fix("u2", march), u4, fix("u4", march)]
    )
    # not registered (any more): left out, even when newest of all
    await store.insert_positions([fix("gone", may + SECOND, vehicle_id="v9")])
    assert await store.latest_positions() == [u1, u2, u4]  # u3 never reported


async def test_latest_of_a_store_without_positions_is_empty(store: Store) -> None:
    await store.put_vehicle("v1", plate=None, vin=None, loan_ref=None, units=[Unit("u1", "v1")])
    assert await store.latest_positions() == []
