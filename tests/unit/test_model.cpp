// Models built from layer descriptions: the factory's errors (exact messages with the deck
// location), Sequential chaining and its gradient, Residual blocks, and a tiny model that learns.
#include "support/gradcheck.hpp"
#include "tessera/core/check.hpp"
#include "tessera/nn/factory.hpp"
#include "tessera/nn/linear.hpp"
#include "tessera/nn/loss.hpp"
#include "tessera/nn/sequential.hpp"
#include "tessera/optim/optimizer.hpp"

#include <gtest/gtest.h>

using namespace tessera;
using nn::LayerSpec;
using tessera::testing::gradcheck;
using tessera::testing::random_tensor;

namespace {
LayerSpec spec(const std::string& kind, std::map<std::string, nn::OptionValue> options = {}) {
  return LayerSpec{
      kind, std::move(options), DeckLocation{"inputs/cnn.toml", 14, "model.layers[3]"}, {}};
}

LayerSpec with_layers(LayerSpec s, std::vector<LayerSpec> children) {
  s.layers = std::move(children);
  return s;
}

std::string error_of(const LayerSpec& s, const Shape& input) {
  try {
    (void)nn::make_layer(s, "l3", input);
  } catch (const Error& e) {
    EXPECT_EQ(e.exit_code(), 2);
    EXPECT_EQ(e.where().key, "model.layers[3]");
    return e.what();
  }
  return "";
}
}  // namespace

TEST(Factory, BuildsEveryKind) {
  const Shape image{3, 8, 8};
  const Shape volume{2, 4, 4, 4};
  struct Case {
    LayerSpec s;
    Shape in, out;
  };
  const std::vector<Case> cases{
      {spec("linear", {{"out", std::int64_t{5}}}), {7}, {5}},
      {spec("conv2d",
            {{"out", std::int64_t{4}}, {"kernel", std::int64_t{3}}, {"pad", std::int64_t{1}}}),
       image,
       {4, 8, 8}},
      {spec("conv3d", {{"out", std::int64_t{4}}, {"kernel", std::vector<std::int64_t>{3, 3, 1}}}),
       volume,
       {4, 2, 2, 4}},
      {spec("maxpool2d", {{"kernel", std::int64_t{2}}}), image, {3, 4, 4}},
      {spec("avgpool3d", {{"kernel", std::int64_t{2}}}), volume, {2, 2, 2, 2}},
      {spec("global_avgpool"), image, {3}},
      {spec("batchnorm2d", {{"momentum", 0.2}}), image, image},
      {spec("layernorm"), {4, 6}, {4, 6}},
      {spec("leaky_relu", {{"negative_slope", 0.1}}), image, image},
      {spec("gelu"), image, image},
      {spec("dropout", {{"p", 0.25}}), image, image},
      {spec("flatten"), image, {192}},
      {spec("embedding", {{"vocab", std::int64_t{50}}, {"dim", std::int64_t{6}}}), {4}, {4, 6}},
      {spec("attention", {{"heads", std::int64_t{2}}}), {4, 6}, {4, 6}},
      {with_layers(spec("residual"), {spec("layernorm"), spec("gelu")}), {4, 6}, {4, 6}},
      {with_layers(spec("repeat", {{"times", std::int64_t{3}}}),
                   {spec("linear", {{"out", std::int64_t{6}}}), spec("tanh")}),
       {4, 6},
       {4, 6}},
  };
  for (const Case& c : cases) {
    const auto layer = nn::make_layer(c.s, "l", c.in);
    EXPECT_EQ(layer->kind(), c.s.kind);
    EXPECT_EQ(layer->output_shape(c.in), c.out) << c.s.kind;
  }
  EXPECT_EQ(nn::layer_kinds().size(), 23U);
}

TEST(Factory, CompositesNameTheirChildrenAndRepeat) {
  // repeat = { times = 2, layers = [ { residual = { layers = [ layernorm, linear ] } } ] }: two
  // copies of the block, each a chain of its own, every parameter named along the path.
  const LayerSpec block = with_layers(
      spec("residual"), {spec("layernorm"), spec("linear", {{"out", std::int64_t{6}}})});
  const auto layer = nn::make_layer(
      with_layers(spec("repeat", {{"times", std::int64_t{2}}}), {block}), "repeat2", {4, 6});
  std::vector<std::string> names;
  for (const nn::Parameter* p : layer->all_parameters()) {
    names.push_back(p->name);
  }
  EXPECT_EQ(names,
            (std::vector<std::string>{
                "repeat2.0.residual0.layernorm0.weight", "repeat2.0.residual0.layernorm0.bias",
                "repeat2.0.residual0.linear1.weight", "repeat2.0.residual0.linear1.bias",
                "repeat2.1.residual0.layernorm0.weight", "repeat2.1.residual0.layernorm0.bias",
                "repeat2.1.residual0.linear1.weight", "repeat2.1.residual0.linear1.bias"}));
  layer->initialize(5);
  EXPECT_EQ(gradcheck(*layer, random_tensor("x", {2, 4, 6}, 6)), 0);
  EXPECT_EQ(error_of(spec("residual"), {4, 6}),
            "inputs/cnn.toml:14: residual 'l3': option 'layers' is required");
}

TEST(Factory, MistakesNameTheLayerTheOptionAndTheDeckLine) {
  EXPECT_EQ(error_of(spec("conv2"), {1, 28, 28}),
            "inputs/cnn.toml:14: unknown layer type 'conv2' (did you mean 'conv2d'?); known types: "
            "attention, avgpool2d, avgpool3d, batchnorm2d, batchnorm3d, conv2d, conv3d, dropout, "
            "embedding, flatten, "
            "gelu, global_avgpool, layernorm, leaky_relu, linear, maxpool2d, maxpool3d, relu, "
            "repeat, residual, sigmoid, tanh, tied_head");
  EXPECT_EQ(error_of(spec("conv2d", {{"out", std::int64_t{8}}, {"kernal", std::int64_t{3}}}),
                     {1, 28, 28}),
            "inputs/cnn.toml:14: conv2d 'l3': unknown option 'kernal' (did you mean 'kernel'?)");
  EXPECT_EQ(error_of(spec("conv2d", {{"out", std::int64_t{8}},
                                     {"kernel", std::int64_t{3}},
                                     {"strides", std::int64_t{2}}}),
                     {1, 28, 28}),
            "inputs/cnn.toml:14: conv2d 'l3': unknown option 'strides' (did you mean 'stride'?); "
            "conv2d takes out, kernel, stride, pad, bias");
  EXPECT_EQ(error_of(spec("linear", {{"out", std::string("ten")}}), {784}),
            "inputs/cnn.toml:14: linear 'l3': option 'out' must be an integer, got \"ten\"");
  EXPECT_EQ(error_of(spec("linear"), {784}),
            "inputs/cnn.toml:14: linear 'l3': option 'out' is required");
  EXPECT_EQ(error_of(spec("relu", {{"slope", 0.1}}), {10}),
            "inputs/cnn.toml:14: relu 'l3': unknown option 'slope'; relu takes no options");
  // The layer's own shape check, located in the deck.
  const std::string shape_error =
      error_of(spec("linear", {{"out", std::int64_t{10}}}), {1, 28, 28});
  EXPECT_EQ(shape_error.rfind("inputs/cnn.toml:14: linear 'l3': ", 0), 0U) << shape_error;
  EXPECT_NE(shape_error.find("(1, 28, 28)"), std::string::npos) << shape_error;
}

TEST(Sequential, ChainsShapesAndChecksEachLayer) {
  nn::Sequential model("model", {1, 6, 6});
  model.add(nn::make_layer(spec("conv2d", {{"out", std::int64_t{2}}, {"kernel", std::int64_t{3}}}),
                           "conv", {1, 6, 6}));
  // tanh, not relu: perturbing a conv weight moves every output of its channel, and a relu kink
  // crossed by the finite difference would spoil the check.
  model.add(nn::make_layer(spec("tanh"), "act", model.output_shape()));
  model.add(nn::make_layer(spec("flatten"), "flat", model.output_shape()));
  model.emplace<nn::Linear>("fc", nn::LinearOptions{3, true});
  EXPECT_EQ(model.output_shape(), (Shape{3}));
  EXPECT_EQ(model.all_parameters().size(), 4U);  // conv weight, bias; fc weight, bias
  EXPECT_EQ(model.all_parameters()[2]->name, "fc.weight");
  // A layer that does not take the current output shape is refused, naming it.
  try {
    model.add(nn::make_layer(
        spec("conv2d", {{"out", std::int64_t{2}}, {"kernel", std::int64_t{3}}}), "bad", {1, 6, 6}));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("conv2d 'bad'"), std::string::npos) << e.what();
  }
  model.initialize(42);
  const Tensor x = random_tensor("x", {4, 1, 6, 6}, 3);
  EXPECT_EQ(gradcheck(model, x), 0);
}

TEST(Residual, AddsTheInputAndPassesGradientBothWays) {
  auto body = std::make_unique<nn::Sequential>("body", Shape{5});
  body->emplace<nn::Linear>("fc1", nn::LinearOptions{5, true});
  body->add(nn::make_layer(spec("tanh"), "act", {5}));
  nn::Residual block("block", {5}, std::move(body));
  block.initialize(7);
  const Tensor x = random_tensor("x", {3, 5}, 4);
  // Forward: y = x + tanh(W x + b), checked against the parts computed separately.
  nn::Layer& inner = *block.children()[0];
  const std::vector<float> inner_y = inner.forward(x, {}).output.to_host();
  const std::vector<float> y = block.forward(x, {}).output.to_host();
  const std::vector<float> xv = x.to_host();
  for (size_t i = 0; i < y.size(); ++i) {
    EXPECT_FLOAT_EQ(y[i], xv[i] + inner_y[i]);
  }
  EXPECT_EQ(gradcheck(block, x), 0);
  try {
    auto wrong = std::make_unique<nn::Linear>("fc", Shape{5}, nn::LinearOptions{4, true});
    nn::Residual bad("bad", {5}, std::move(wrong));
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(),
                 "residual 'bad': body linear 'fc' maps (5,) to (4,); a residual needs "
                 "equal shapes");
  }
}

TEST(Model, LearnsASeparableProblem) {
  // Two Gaussian blobs in 4-D; an MLP trained with SGD must classify the training set well.
  const Index n = 64;
  std::vector<float> xs = tessera::testing::random_values(n * 4, 9, -1.0F, 1.0F);
  std::vector<float> labels_h(static_cast<size_t>(n));
  IntView labels("labels", static_cast<size_t>(n));
  auto lh = Kokkos::create_mirror_view(labels);
  for (Index i = 0; i < n; ++i) {
    const int c = static_cast<int>(i % 2);
    lh(static_cast<size_t>(i)) = c;
    xs[static_cast<size_t>(i * 4)] += c == 0 ? -1.5F : 1.5F;
  }
  Kokkos::deep_copy(labels, lh);
  const Tensor x = Tensor::from_host("x", {n, 4}, xs);
  nn::Sequential model("mlp", {4});
  model.emplace<nn::Linear>("fc1", nn::LinearOptions{16, true});
  model.add(nn::make_layer(spec("relu"), "act", {16}));
  model.emplace<nn::Linear>("fc2", nn::LinearOptions{2, true});
  model.initialize(1);
  optim::Sgd sgd({0.9F, false, 0.0F});
  double first = 0.0;
  nn::LossOutput out;
  for (int step = 0; step < 100; ++step) {
    model.zero_grad();
    nn::ForwardResult f = model.forward(x, {});
    out = nn::softmax_cross_entropy(f.output, labels, n);
    if (step == 0) {
      first = out.loss;
    }
    model.backward(out.grad, std::move(f.ctx));
    sgd.step(model.all_parameters(), 0.05);
  }
  EXPECT_LT(out.loss, 0.1 * first);
  EXPECT_GE(out.correct, n - 2);
}

TEST(Sequential, SkipsTheInputGradientOfADataInput) {
  // flatten (no parameters) -> linear -> tanh -> linear: with a data input, neither flatten nor the
  // first linear layer needs dL/dx; the parameter gradients are unchanged.
  auto build = [] {
    auto m = std::make_unique<nn::Sequential>("m", Shape{2, 3});
    m->add(nn::make_layer(spec("flatten"), "flat", {2, 3}));
    m->emplace<nn::Linear>("fc1", nn::LinearOptions{4, true});
    m->add(nn::make_layer(spec("tanh"), "act", {4}));
    m->emplace<nn::Linear>("fc2", nn::LinearOptions{2, true});
    m->initialize(3);
    return m;
  };
  auto full = build();
  auto data = build();
  data->set_needs_input_grad(false);
  EXPECT_FALSE((*data)[0].needs_input_grad());
  EXPECT_FALSE((*data)[1].needs_input_grad());
  EXPECT_TRUE((*data)[2].needs_input_grad());
  EXPECT_TRUE((*data)[3].needs_input_grad());
  const Tensor x = random_tensor("x", {5, 2, 3}, 8);
  const Tensor dy = random_tensor("dy", {5, 2}, 9);
  nn::ForwardResult a = full->forward(x, {});
  nn::ForwardResult b = data->forward(x, {});
  EXPECT_TRUE(full->backward(dy, std::move(a.ctx)).defined());
  EXPECT_FALSE(data->backward(dy, std::move(b.ctx)).defined());
  const auto pa = full->all_parameters();
  const auto pb = data->all_parameters();
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_EQ(pa[i]->grad.to_host(), pb[i]->grad.to_host()) << pa[i]->name;
  }
}

TEST(Layers, SkipTheInputGradientWhenNotNeeded) {
  // Linear and Conv2d return no dL/dx when told it is not needed, with the same parameter grads.
  for (const LayerSpec& s :
       {spec("linear", {{"out", std::int64_t{3}}}),
        spec("conv2d",
             {{"out", std::int64_t{2}}, {"kernel", std::int64_t{3}}, {"pad", std::int64_t{1}}})}) {
    const Shape in = s.kind == "linear" ? Shape{5} : Shape{2, 4, 4};
    auto a = nn::make_layer(s, "a", in);
    auto b = nn::make_layer(s, "a", in);
    a->initialize(1);
    b->initialize(1);
    b->set_needs_input_grad(false);
    Shape xs{3};
    xs.insert(xs.end(), in.begin(), in.end());
    const Tensor x = random_tensor("x", xs, 2);
    nn::ForwardResult fa = a->forward(x, {});
    nn::ForwardResult fb = b->forward(x, {});
    const Tensor dy = random_tensor("dy", fa.output.shape(), 3);
    EXPECT_TRUE(a->backward(dy, std::move(fa.ctx)).defined());
    EXPECT_FALSE(b->backward(dy, std::move(fb.ctx)).defined());
    for (size_t i = 0; i < a->parameters().size(); ++i) {
      EXPECT_EQ(a->parameters()[i].grad.to_host(), b->parameters()[i].grad.to_host()) << s.kind;
    }
  }
}

TEST(Sequential, BackwardHookSeesEachLayerOnceItsGradientsAreFinal) {
  // The hook runs after each layer's backward, last layer first; at that moment the layer's
  // parameter gradients already equal their final values (what the data-parallel reduction needs).
  nn::Sequential m("m", {4});
  m.emplace<nn::Linear>("fc1", nn::LinearOptions{3, true});
  m.add(nn::make_layer(spec("tanh"), "act", {3}));
  m.emplace<nn::Linear>("fc2", nn::LinearOptions{2, true});
  m.initialize(5);
  m.set_needs_input_grad(false);
  std::vector<std::string> order;
  std::map<std::string, std::vector<float>> at_hook;
  m.set_backward_hook([&](nn::Layer& layer) {
    order.push_back(layer.name());
    for (const nn::Parameter* p : layer.all_parameters()) {
      at_hook[p->name] = p->grad.to_host();
    }
  });
  const Tensor x = random_tensor("x", {3, 4}, 1);
  nn::ForwardResult f = m.forward(x, {});
  (void)m.backward(random_tensor("dy", {3, 2}, 2), std::move(f.ctx));
  EXPECT_EQ(order, (std::vector<std::string>{"fc2", "act", "fc1"}));
  for (const nn::Parameter* p : m.all_parameters()) {
    EXPECT_EQ(at_hook.at(p->name), p->grad.to_host()) << p->name;
  }
}
