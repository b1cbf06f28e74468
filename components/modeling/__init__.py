"""hubpipe's modeling library: what the Trainer, the ModuleSelector and the
Compressor share. None of the three imports another's code; they all
import this.

  modules   which module a model is built on (ModuleChoice), resolved in
            the step that needs it
  model     the module layer, feature extractor (`extractor_for`: the one
            place a model is built from a config), head, classifier
  partial   the hybrid mode's partly trainable module layer
  inputs    TFXIO readers, seeded shuffles, stratified samples, class count
  training  class weights, fitting a head on features, the bag-of-words
            reference
  measure   accuracy, latency, size and sparsity, Keras and TFLite alike
  export    the Trainer's export (serving and core signatures, the model
            record) and how later steps load it
"""

# The Transform's vocabulary of the label values it saw (the class count).
LABEL_VOCABULARY = 'label_values'
# With class names as labels (data.label_type: string): the Transform's
# vocabulary of the names; a name's line number is its class id.
LABEL_NAMES = 'label_names'
