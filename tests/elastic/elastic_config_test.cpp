// ElasticConfig: names, parsing, validation and the reuse and granule rules.

#include <doctest/doctest.h>

#include <string>

#include "ekv/elastic/elastic_config.hpp"

TEST_CASE("anchor kinds and retrieval types parse from their names, in any case") {
  for (ekv::AnchorKind kind : ekv::kAnchorKinds) CHECK(ekv::parse_anchor_kind(ekv::to_string(kind)) == kind);
  for (ekv::RetrievalType type : ekv::kRetrievalTypes) CHECK(ekv::parse_retrieval_type(ekv::to_string(type)) == type);
  CHECK(ekv::parse_anchor_kind("BLOCK_MEAN") == ekv::AnchorKind::kBlockMean);
  CHECK(ekv::parse_retrieval_type("KVHead") == ekv::RetrievalType::kKvHead);
  CHECK(std::string(ekv::to_string(ekv::AnchorKind::kQuest)) == "quest");
  CHECK(std::string(ekv::to_string(ekv::RetrievalType::kQHead)) == "qhead");
}

TEST_CASE("unknown names throw, listing the valid ones") {
  CHECK_THROWS_WITH_AS(ekv::parse_anchor_kind("mean"),
                       "unknown anchor kind 'mean'; supported: quest, block_mean, block_max, fixed, dynamic",
                       ekv::Error);
  CHECK_THROWS_WITH_AS(ekv::parse_retrieval_type("head"),
                       "unknown retrieval type 'head'; supported: layer, kvhead, qhead", ekv::Error);
}

TEST_CASE("validate accepts the defaults and names the first bad field") {
  CHECK(ekv::ElasticConfig{}.validate().ok);
  const auto why = [](auto change) {
    ekv::ElasticConfig c;
    change(c);
    const ekv::Support s = c.validate();
    CHECK_FALSE(s.ok);
    return s.why;
  };
  CHECK(why([](auto& c) { c.anchor = static_cast<ekv::AnchorKind>(9); }) == "ElasticConfig: invalid anchor kind value 9");
  CHECK(why([](auto& c) { c.retrieval = static_cast<ekv::RetrievalType>(-1); }) ==
        "ElasticConfig: invalid retrieval type value -1");
  CHECK(why([](auto& c) { c.anchor_num = 0; }) == "ElasticConfig: anchor_num=0 must be at least 1");
  CHECK(why([](auto& c) { c.init_block_num = -1; }) == "ElasticConfig: init_block_num=-1 must not be negative");
  CHECK(why([](auto& c) { c.local_block_num = -2; }) == "ElasticConfig: local_block_num=-2 must not be negative");
  CHECK(why([](auto& c) { c.pick_block_num = -3; }) == "ElasticConfig: pick_block_num=-3 must not be negative");
  CHECK(why([](auto& c) { c.token_step = 0; }) == "ElasticConfig: token_step=0 must be at least 1");
  CHECK(why([](auto& c) { c.layer_step = 0; }) == "ElasticConfig: layer_step=0 must be at least 1");
  CHECK(why([](auto& c) { c.layer_step = 2, c.layer_offset = 2; }) ==
        "ElasticConfig: layer_offset=2 must be in [0, layer_step=2)");
}

TEST_CASE("token_step and layer_step say which steps and layers select") {
  ekv::ElasticConfig c;
  c.token_step = 3;
  for (int step = 0; step < 10; ++step) CHECK(c.refreshes_selection(step) == (step % 3 == 0));
  c.layer_step = 3;
  c.layer_offset = 1;
  const int expected[] = {0, 1, 1, 1, 4, 4, 4, 7};  // layer 0 precedes the offset: its own
  for (int layer = 0; layer < 8; ++layer) CHECK(c.selection_layer(layer) == expected[layer]);
  CHECK(ekv::ElasticConfig{}.selection_layer(5) == 5);
}

TEST_CASE("granules and anchor sizes") {
  CHECK(ekv::num_granules(ekv::RetrievalType::kLayer, 32, 8) == 1);
  CHECK(ekv::num_granules(ekv::RetrievalType::kKvHead, 32, 8) == 8);
  CHECK(ekv::num_granules(ekv::RetrievalType::kQHead, 32, 8) == 32);
  CHECK(ekv::granule_of(ekv::RetrievalType::kLayer, 13, 4) == 0);
  CHECK(ekv::granule_of(ekv::RetrievalType::kKvHead, 13, 4) == 3);
  CHECK(ekv::granule_of(ekv::RetrievalType::kQHead, 13, 4) == 13);
  CHECK(ekv::anchor_values(ekv::AnchorKind::kQuest, 4, 128) == 256);
  CHECK(ekv::anchor_values(ekv::AnchorKind::kBlockMean, 4, 128) == 128);
  CHECK(ekv::anchor_values(ekv::AnchorKind::kBlockMax, 4, 128) == 128);
  CHECK(ekv::anchor_values(ekv::AnchorKind::kFixed, 4, 128) == 512);
  CHECK(ekv::anchor_values(ekv::AnchorKind::kDynamic, 3, 64) == 192);
}
