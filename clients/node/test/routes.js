// Watching what a routing client's Routes decide.

/** The members `routes` is told are unreachable, in order, from now on. */
export function recordMarks(routes) {
  const marked = [];
  const unreachable = routes.unreachable.bind(routes);
  routes.unreachable = (address, ...rest) => {
    marked.push(address);
    unreachable(address, ...rest);
  };
  return marked;
}
