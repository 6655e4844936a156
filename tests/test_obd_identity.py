"""Pure decoding of what a car says of itself (SAE J1979 mode 09, mode 02) and the
column prefixes of ECUs other than the engine."""
from eccm.sources.obd.frames import (Message, decode_mode09_items, ecu_acronym,
                                     freeze_frame_data, item_text)
from eccm.sources.obd.values import ecu_prefixes


def test_calibration_ids_are_counted_items_of_16_bytes():
    calid = b"JMB*36761500" + bytes(4)   # 12 ASCII characters, NUL padded to 16
    second = b"JMB*47872611" + bytes(4)
    data = bytes([0x49, 0x04, 0x02]) + calid + second
    assert decode_mode09_items([Message(0x7E8, data)], 0x04) == [calid, second]
    assert [item_text(i) for i in (calid, second)] == ["JMB*36761500", "JMB*47872611"]


def test_an_identification_answer_that_is_not_whole_gives_nothing():
    calid = b"JMB*36761500" + bytes(4)
    assert decode_mode09_items([Message(0x7E8, bytes([0x49, 0x04, 0x02]) + calid)],
                               0x04) is None  # says 2, carries 1
    assert decode_mode09_items([Message(0x7E8, bytes([0x49, 0x04, 0x01]) + calid[:15])],
                               0x04) is None  # a byte short
    assert decode_mode09_items([Message(0x7E8, bytes([0x49, 0x06, 0x01]) + calid)],
                               0x04) is None  # the answer to another PID
    two = [Message(0x7E8, bytes([0x49, 0x06, 0x01, 1, 2, 3, 4]))] * 2
    assert decode_mode09_items(two, 0x06) is None  # two answers from one ECU


def test_cvns_are_four_bytes_each():
    data = bytes([0x49, 0x06, 0x02, 0x17, 0x91, 0xBC, 0x82, 0x16, 0xE0, 0x62, 0xBE])
    assert decode_mode09_items([Message(0x7E8, data)], 0x06) == [
        bytes([0x17, 0x91, 0xBC, 0x82]), bytes([0x16, 0xE0, 0x62, 0xBE])]


def test_an_ecu_name_with_its_acronym_padded_by_nul_is_read():
    """J1979 gives the acronym 4 bytes: a 3-letter one is NUL padded before the dash."""
    data = bytes([0x49, 0x0A, 0x01]) + b"TCM\x00-TransmisCtrl" + bytes(3)  # 4 + 1 + 15
    (item,) = decode_mode09_items([Message(0x7E9, data)], 0x0A)
    assert item_text(item, name=True) == "TCM-TransmisCtrl"
    assert ecu_acronym(item_text(item, name=True)) == "TCM"
    assert item_text(b"1234\x00\x0056" + bytes(10)) is None  # inside a CALID: not padding


def test_item_text_refuses_bytes_that_are_not_printable():
    assert item_text(b"ECM-EngineControl" + bytes(3)) == "ECM-EngineControl"
    assert item_text(b"ECM\x01EngineControl" + bytes(3)) is None
    assert item_text(bytes(16)) is None


def test_ecu_acronym_is_the_part_before_the_dash():
    assert ecu_acronym("TCM-TransmissionCtl") == "TCM"
    assert ecu_acronym("BECM-BatteryEnergy") == "BECM"
    assert ecu_acronym("TransmissionCtl") is None       # no dash: not J1979's form
    assert ecu_acronym("TOO_LONG-Name") is None         # not 2-4 letters or digits


def test_prefixes_keep_the_engines_names_and_name_the_others():
    names = {0x7E8: "ECM-EngineControl", 0x7E9: "TCM-TransmissionCtl", 0x7EA: None}
    assert ecu_prefixes(0x7E8, names) == {0x7E8: "", 0x7E9: "TCM.", 0x7EA: "ECU7EA."}


def test_two_ecus_with_one_acronym_are_named_by_address():
    names = {0x10: "ECM-EngineControl", 0x18: "HPCM-Hybrid1", 0x28: "HPCM-Hybrid2"}
    assert ecu_prefixes(0x10, names) == {0x10: "", 0x18: "ECU18.", 0x28: "ECU28."}


def test_freeze_frame_data_is_the_whole_answer_to_that_pid():
    # 42 0C 00 1A F8: RPM (256*0x1A + 0xF8) / 4 = 1726 rpm when the code was stored.
    answer = [Message(0x7E8, bytes([0x42, 0x0C, 0x00, 0x1A, 0xF8]))]
    assert freeze_frame_data(answer, 0x0C, 2) == bytes([0x1A, 0xF8])
    assert freeze_frame_data(answer, 0x0D, 1) is None   # another PID's answer
    cut = [Message(0x7E8, bytes([0x42, 0x0C, 0x00, 0x1A]))]
    assert freeze_frame_data(cut, 0x0C, 2) is None      # never padded
    frame1 = [Message(0x7E8, bytes([0x42, 0x0C, 0x01, 0x1A, 0xF8]))]
    assert freeze_frame_data(frame1, 0x0C, 2) is None   # frame 01, not frame 00
